"""A small folder of every kind of awkward file a user's disk holds, and what the scan
must make of each: `write_bad_file_corpus(root) -> Corpus`.

Kept tiny (a few dozen small images) so the whole corpus goes through scan, embed,
eval, search, map, export and one training epoch in seconds."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_FILE = os.fsdecode(b"\xff\xfe.png")  # Python's name for it: lone surrogates
NON_UTF8_CLASS = os.fsdecode(b"caf\xe9")  # "café" in Latin-1, as on old disks and archives
LONG_NAME = "n" * 246 + ".png"  # 250 characters


@dataclass
class Corpus:
    root: Path
    skipped: dict[str, str] = field(default_factory=dict)  # relative path → a word of the reason
    readable: set[str] = field(default_factory=set)  # ids the scan must keep
    warnings: list[str] = field(default_factory=list)  # a word of each scan warning


def write_bad_file_corpus(root: Path) -> Corpus:
    corpus = Corpus(root)
    rng = np.random.default_rng(0)
    for name, colour in (("plain", (200, 40, 40)), ("odd", (40, 200, 40)), (NON_UTF8_CLASS, (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _save_rgb(root / name / f"img_{i}.jpg", colour, rng)
            corpus.readable.add(f"{name}/img_{i}.jpg")
    _awkward_but_readable(root / "odd", corpus, rng)
    _unreadable(root / "plain", corpus)
    _links(root / "plain", corpus)
    _hidden(root, corpus, rng)
    (root / "empty").mkdir()
    corpus.warnings.append("'empty' has no images")
    (root / "solo").mkdir()
    _save_rgb(root / "solo" / "only.jpg", (120, 120, 0), rng)
    corpus.readable.add("solo/only.jpg")
    corpus.warnings.append("'solo' has only one image")
    _save_rgb(root / "loose.jpg", (0, 0, 0), rng)
    corpus.skipped["loose.jpg"] = "not inside a class folder"
    return corpus


def _save_rgb(path: Path, colour, rng, size=(24, 20)) -> None:
    noise = rng.integers(-15, 16, size=(size[1], size[0], 3))
    Image.fromarray(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)).save(path)


def _awkward_but_readable(folder: Path, corpus: Corpus, rng) -> None:
    """Odd formats and shapes the decoder must turn into RGB."""
    Image.new("RGB", (1, 1), (10, 250, 10)).save(folder / "one_pixel.png")
    Image.new("RGB", (20000, 20), (10, 250, 10)).save(folder / "wide.png")
    Image.new("CMYK", (24, 20), (200, 0, 200, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 130)).save(folder / "sixteen_bit.png")
    palette = Image.new("P", (24, 20), 1)
    palette.putpalette([0, 0, 0, 30, 220, 30] + [0] * 762)
    palette.save(folder / "palette_alpha.png", transparency=0)
    frames = [Image.new("RGB", (24, 20), c) for c in ((20, 230, 20), (60, 200, 60))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    Image.new("RGB", (30, 20), (30, 210, 30)).save(folder / "rotated.jpg", exif=exif.tobytes())
    png = io.BytesIO()
    Image.new("RGB", (24, 20), (25, 225, 25)).save(png, format="PNG")
    with open(os.path.join(os.fsencode(folder), os.fsencode(NON_UTF8_FILE)), "wb") as handle:
        handle.write(png.getvalue())
    (folder / LONG_NAME).write_bytes(png.getvalue())
    names = ["one_pixel.png", "wide.png", "cmyk.jpg", "sixteen_bit.png", "palette_alpha.png", "animated.gif", "rotated.jpg", NON_UTF8_FILE, LONG_NAME]
    corpus.readable.update(f"odd/{name}" for name in names)


def _unreadable(folder: Path, corpus: Corpus) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture\n")
    (folder / "page.png").write_text("<!doctype html><html><body>404 not found</body></html>\n")
    (folder / "bomb.png").write_bytes(_png_header_only(20000, 10000))
    corpus.skipped.update({
        "plain/truncated.jpg": "truncated", "plain/zero.png": "empty file", "plain/text.jpg": "not a recognised image",
        "plain/page.png": "not a recognised image", "plain/bomb.png": "decompression bomb",
    })


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG that declares `width`×`height` pixels in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _links(folder: Path, corpus: Corpus) -> None:
    os.symlink("nowhere.jpg", folder / "broken_link.jpg")
    os.symlink("self_loop.jpg", folder / "self_loop.jpg")  # resolving it loops (ELOOP)
    os.symlink("..", folder / "loop_dir")  # a folder link back into the tree: walked once
    corpus.skipped.update({"plain/broken_link.jpg": "broken link", "plain/self_loop.jpg": "broken link"})


def _hidden(root: Path, corpus: Corpus, rng) -> None:
    _save_rgb(root / "plain" / ".hidden.jpg", (1, 2, 3), rng)
    (root / "plain" / "._img_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (root / "plain" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # not an image name: ignored
    (root / ".thumbs").mkdir()
    _save_rgb(root / ".thumbs" / "t.jpg", (1, 2, 3), rng)
    corpus.skipped.update({"plain/.hidden.jpg": "hidden file", "plain/._img_0.jpg": "hidden file", ".thumbs/": "hidden folder"})


def snapshot(root: Path) -> dict[bytes, tuple[int, int, int]]:
    """Every entry below `root` (links not followed) with its mode, size and mtime: equal
    before and after a command when it wrote nothing into the folder."""
    entries = {}
    for folder, dirs, files in os.walk(os.fsencode(root), followlinks=False):
        for name in [*dirs, *files, b""]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            entries[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries
