"""Values sent between a training process and the app, as one JSON line per message.

An event's `data` holds whatever the trainer and its callbacks send (mining statistics,
histograms, map frames as NumPy arrays, ...), and the result holds a `Dial` of
`DialPoint`s and paths. They are encoded generically, by type, never field by field:
what JSON has (None, bool, int, float incl. NaN/inf, str, list, str-keyed dict) goes as
itself; everything else as a tagged object ``{"__wire__": tag, ...}``:

- NumPy arrays (and torch tensors, which arrive as arrays): dtype, shape and the raw
  bytes in base64, so float32 frames come back bit for bit at 4/3 of their size;
- NumPy scalars: as the Python number they hold;
- tuples, `Path`s, dicts with other keys than strings;
- dataclasses of this package (`TrainEvent`, `TrainResult`, `Dial`, ...): by import
  name and their init fields. Only classes under ``retrieval_app`` are rebuilt, so a
  line cannot make the reader import anything else.

Anything else cannot be sent (`WireError`)."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
from pathlib import Path, PurePath
from typing import Any

import numpy as np

TAG = "__wire__"
TRUSTED_PACKAGE = "retrieval_app"


class WireError(ValueError):
    """A value that cannot be sent, or a line that is not a message."""


def dumps(message: Any) -> str:
    """One line of JSON (no newline inside: JSON escapes those in strings)."""
    return json.dumps(encode(message), separators=(",", ":"), allow_nan=True)


def loads(line: str | bytes) -> Any:
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not a message: {exc}") from None
    return decode(raw)


# --------------------------------------------------------------------- encoding
def encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if _is_tensor(value):
        return _encode_array(value.detach().cpu().numpy())
    if isinstance(value, PurePath):
        return {TAG: "path", "value": str(value)}
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: encode(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {TAG: "dataclass", "type": f"{kind.__module__}:{kind.__qualname__}", "fields": fields}
    raise WireError(f"cannot send a {type(value).__module__}.{type(value).__qualname__}")


def _encode_array(array: np.ndarray) -> dict:
    if array.dtype.hasobject:
        raise WireError("cannot send a NumPy array of Python objects")
    data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
    return {TAG: "ndarray", "dtype": array.dtype.str, "shape": list(array.shape), "data": data}


def _is_tensor(value: Any) -> bool:
    # Without importing torch: the reader of a stream need not have loaded it.
    kind = type(value)
    return kind.__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "numpy")


# --------------------------------------------------------------------- decoding
def decode(raw: Any) -> Any:
    if isinstance(raw, list):
        return [decode(v) for v in raw]
    if not isinstance(raw, dict):
        return raw
    tag = raw.get(TAG)
    if tag is None:
        return {k: decode(v) for k, v in raw.items()}
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise WireError(f"unknown value tag {tag!r}")
    try:
        return decoder(raw)
    except KeyError as exc:
        raise WireError(f"malformed {tag!r} value (missing {exc})") from None


def _decode_array(raw: dict) -> np.ndarray:
    dtype = np.dtype(raw["dtype"])
    if dtype.hasobject:
        raise WireError("refusing a NumPy array of Python objects")
    data = base64.b64decode(raw["data"])
    return np.frombuffer(data, dtype=dtype).reshape(raw["shape"]).copy()  # writable, like the sender's


def _decode_dataclass(raw: dict) -> Any:
    module_name, _, qualname = raw["type"].partition(":")
    if module_name != TRUSTED_PACKAGE and not module_name.startswith(TRUSTED_PACKAGE + "."):
        raise WireError(f"refusing to rebuild {raw['type']} (only {TRUSTED_PACKAGE} classes travel)")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise WireError(f"cannot rebuild {raw['type']}: {exc}") from None
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        raise WireError(f"{raw['type']} is not a dataclass")
    fields = {k: decode(v) for k, v in raw["fields"].items()}
    try:
        return target(**fields)
    except TypeError as exc:  # the sender runs other code than the reader
        raise WireError(f"cannot rebuild {raw['type']}: {exc}") from None


_DECODERS = {
    "ndarray": _decode_array,
    "path": lambda raw: Path(raw["value"]),
    "tuple": lambda raw: tuple(decode(v) for v in raw["items"]),
    "dict": lambda raw: {_hashable(decode(k)): decode(v) for k, v in raw["items"]},
    "dataclass": _decode_dataclass,
}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):  # only from a malformed line: keys are sent as tuples
        raise WireError("a dict key cannot be a list")
    return key
