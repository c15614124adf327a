"""Labels from a CSV file (`id,label`), for folders whose layout is not class-per-folder.

The file has one row per image: its id (the path relative to the folder, as every
command prints it) and a label (any text). A first row `id,label` is a header and
skipped. Images the CSV does not name stay without a label; the CSV never changes
which images are used. Nothing is guessed silently: a row whose id is not an image of
the folder, a row without exactly two non-empty fields, and an id given twice with
different labels are each reported (`LabelReport.problems`, one line per row, with its
line number) and left out; a file with no usable row at all is an error.

`open_folder` is the one entry point the CLI, the app and the trainer share: scan in
the chosen layout, then apply the CSV (with a CSV the layout is "unlabelled" unless
given: the CSV, not the folders, says what belongs together)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DatasetError
from .scan import UNLABELLED, ScanResult, scan_folder

HEADER = ("id", "label")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a labels file is text: refuse anything absurd before reading it
REPORTED_PROBLEMS = 20  # problems listed one by one in warnings; the rest are counted


@dataclass
class LabelReport:
    """What a labels CSV did: images labelled, and each row left out with why."""

    path: Path
    n_rows: int = 0
    n_labelled: int = 0
    problems: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        lines = [f"labels file {self.path.name}: {p}" for p in self.problems[:REPORTED_PROBLEMS]]
        if len(self.problems) > REPORTED_PROBLEMS:
            lines.append(f"labels file {self.path.name}: ... and {len(self.problems) - REPORTED_PROBLEMS} more rows left out")
        return lines


def read_label_rows(path: str | os.PathLike) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, id, label) of every well-formed row, and one problem line per bad row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"labels file {path} does not exist or is not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DatasetError(f"labels file {path} is larger than {MAX_FILE_BYTES // 2**20} MB: not an id,label list")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is no part of the first id
    except UnicodeDecodeError as exc:
        raise DatasetError(f"labels file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    rows, problems = [], []
    for number, fields in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in fields]
        if not any(cells):
            continue  # blank lines are no rows
        if number == 1 and tuple(c.lower() for c in cells) == HEADER:
            continue
        if len(cells) != 2:
            problems.append(f"line {number}: expected 2 fields (id,label), found {len(cells)}")
        elif not cells[0] or not cells[1]:
            problems.append(f"line {number}: empty {'id' if not cells[0] else 'label'}")
        else:
            rows.append((number, cells[0], cells[1]))
    return rows, problems


def apply_label_csv(scan: ScanResult, path: str | os.PathLike) -> tuple[ScanResult, LabelReport]:
    """`scan` with the CSV's labels (classes sorted by name) and a report; the CSV's
    problems are also added to the scan's warnings. Raises `DatasetError` when no row
    labels an image of the folder."""
    rows, problems = read_label_rows(path)
    report = LabelReport(Path(path), n_rows=len(rows) + len(problems))
    known = {record.id for record in scan.records}
    chosen: dict[str, tuple[int, str]] = {}
    for number, image_id, label in rows:
        image_id = image_id.replace("\\", "/").removeprefix("./")
        if image_id not in known:
            problems.append(f"line {number}: unknown id '{image_id}' (no readable image with that path below {scan.root})")
        elif image_id in chosen and chosen[image_id][1] != label:
            problems.append(f"line {number}: id '{image_id}' labelled '{label}' here but '{chosen[image_id][1]}' on line {chosen[image_id][0]}; the first is kept")
        else:
            chosen.setdefault(image_id, (number, label))
    report.problems = problems
    if not chosen:
        first = f" (e.g. {problems[0]})" if problems else ""
        raise DatasetError(f"labels file {report.path} labels none of the {len(scan.records)} images in {scan.root}{first}")
    classes = sorted({label for _, label in chosen.values()})
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for record in scan.records:
        label = chosen.get(record.id, (0, None))[1]
        records.append(replace(record, label=index[label], class_name=label) if label is not None else replace(record, label=UNLABELLED, class_name=""))
    report.n_labelled = len(chosen)
    return replace(scan, classes=classes, records=records, warnings=[*scan.warnings, *report.warnings()]), report


def open_folder(root: str | os.PathLike, *, layout: str | None = None, labels: str | os.PathLike | None = None, check_images: bool = True) -> ScanResult:
    """Scan `root` (layout "auto" by default, "unlabelled" when a labels CSV is given)
    and apply the CSV's labels, if any."""
    scan = scan_folder(root, check_images=check_images, layout=layout or ("unlabelled" if labels else "auto"))
    if labels:
        scan, _ = apply_label_csv(scan, labels)
    return scan
