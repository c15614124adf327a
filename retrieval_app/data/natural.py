"""Natural order of names: "s2" before "s10", "Leopards" among the l's.

Class folders are often numbered (`s1` … `s40`, `class_2`, `class_10`); a plain string
sort lists `s10` before `s2` and every capitalised name before the lower-case ones. Runs
of digits compare by their value and letters without regard to case, as file managers
list them. The key ends with the name itself, so the order is total and stable (`s02`
and `s2`, `Cat` and `cat` keep one fixed order)."""

from __future__ import annotations

import re
from typing import Iterable

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key: the name's text and number runs, then the name itself. Digit runs are
    (0, value, length) and text runs (1, casefolded text): the tags keep a number from
    ever being compared with text."""
    runs = []
    for i, part in enumerate(_DIGITS.split(name)):
        if i % 2:
            runs.append((0, int(part), len(part)))
        elif part:
            runs.append((1, part.casefold()))
    return tuple(runs), name


def natural_sorted(names: Iterable[str]) -> list[str]:
    """`names` in natural order."""
    return sorted(names, key=natural_key)
