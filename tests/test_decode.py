"""load_image and check_image_file: every pixel mode, every source kind, orientation,
draft decoding, and failures that must become ImageDecodeError with a reason."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from retrieval_app.data import check_image_file, load_image
from retrieval_app.data import decode as decode_module
from retrieval_app.errors import ImageDecodeError


def saved(tmp_path, image: Image.Image, name: str, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def noisy_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise compresses badly, so a JPEG of it has a long scan (truncation lands in it)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def stored(path, attribute: str = "mode"):
    """An attribute of the file as Pillow opens it (closing the file again)."""
    with Image.open(path) as image:
        return getattr(image, attribute)


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


# --- pixel modes -------------------------------------------------------------------

def test_greyscale_becomes_equal_rgb(tmp_path):
    path = saved(tmp_path, Image.new("L", (6, 4), 77), "grey.png")
    assert pixel(load_image(path)) == (77, 77, 77)


@pytest.mark.parametrize("name", ["palette.png", "palette.gif"])
def test_palette_with_transparency_goes_over_white(tmp_path, name):
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.paste(0, (0, 0, 3, 4))  # left half: the transparent index
    path = saved(tmp_path, image, name, transparency=0)
    out = load_image(path)
    assert pixel(out, (0, 0)) == (255, 255, 255)
    assert pixel(out, (5, 0)) == (200, 100, 50)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = saved(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg", quality=95)
    r, g, b = pixel(load_image(path))
    assert r > 240 and g < 15 and b < 15  # pure red, not inverted


def test_rgba_alpha_is_composited_onto_white(tmp_path):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(saved(tmp_path, image, "alpha.png"))
    assert pixel(out, (0, 0)) == (255, 255, 255)  # transparent → white, not black
    assert pixel(out, (1, 0)) == (0, 0, 0)
    assert pixel(out, (2, 0))[0] in (127, 128)


def test_greyscale_with_alpha(tmp_path):
    image = Image.new("LA", (2, 1), (10, 0))
    image.putpixel((1, 0), (10, 255))
    out = load_image(saved(tmp_path, image, "la.png"))
    assert pixel(out, (0, 0)) == (255, 255, 255) and pixel(out, (1, 0)) == (10, 10, 10)


@pytest.mark.parametrize("name", ["sixteen.png", "sixteen.tif", "sixteen.pgm"])
@pytest.mark.parametrize("value, expected", [(65535, 255), (32896, 128), (257, 1), (0, 0)])
def test_16_bit_is_scaled_not_clipped(tmp_path, name, value, expected):
    path = saved(tmp_path, Image.fromarray(np.full((3, 5), value, dtype=np.uint16)), name)
    assert stored(path) in ("I;16", "I")  # really stored as 16-bit
    assert pixel(load_image(path)) == (expected,) * 3


def test_16_bit_gradient_keeps_its_order(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256)
    out = np.asarray(load_image(saved(tmp_path, Image.fromarray(ramp), "ramp.png")))[0, :, 0]
    assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out.astype(int)) >= 0)
    assert len(np.unique(out)) > 200  # scaled, so no banding at 255


@pytest.mark.parametrize("values, expected", [((0.0, 0.5, 1.0), (0, 128, 255)), ((-10.0, 0.0, 10.0), (0, 128, 255))])
def test_float_images(tmp_path, values, expected):
    path = saved(tmp_path, Image.fromarray(np.array([values], dtype=np.float32)), "float.tif")
    assert stored(path) == "F"
    assert tuple(np.asarray(load_image(path))[0, :, 0]) == expected


def test_bilevel_pbm(tmp_path):
    image = Image.new("1", (4, 4), 0)
    image.putpixel((3, 3), 1)
    out = load_image(saved(tmp_path, image, "bits.pbm"))
    assert pixel(out, (0, 0)) == (0, 0, 0) and pixel(out, (3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("name, options", [
    ("x.bmp", {}), ("x.ppm", {}), ("x.webp", {"lossless": True}), ("x.tif", {}), ("x.png", {}),
])
def test_lossless_formats_round_trip_exactly(tmp_path, name, options):
    source = noisy_rgb(12, 9)
    out = load_image(saved(tmp_path, source, name, **options))
    assert out.size == (12, 9) and np.array_equal(np.asarray(out), np.asarray(source))


def test_multi_frame_gif_and_tiff_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    for name in ("anim.gif", "pages.tif"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:])
        assert stored(path, "n_frames") == 3
        r, g, b = pixel(load_image(path))
        assert r > 240 and g < 15 and b < 15


# --- sources -----------------------------------------------------------------------

def test_every_source_kind_gives_the_same_pixels(tmp_path):
    source = noisy_rgb(10, 7)
    path = saved(tmp_path, source, "x.png")
    expected = np.asarray(source)
    data = path.read_bytes()
    stream = io.BytesIO(data)
    for item in (path, str(path), data, bytearray(data), stream, source):
        assert np.array_equal(np.asarray(load_image(item)), expected), type(item)
    assert not stream.closed  # a caller's stream is left open


def test_a_callers_pil_image_is_not_modified():
    source = Image.new("RGBA", (40, 30), (10, 20, 30, 0))
    out = load_image(source, max_side=20)
    assert out is not source and out.size == (20, 15) and pixel(out) == (255, 255, 255)
    assert source.mode == "RGBA" and source.size == (40, 30)


# --- orientation and size ----------------------------------------------------------

def exif_rotated_jpeg(tmp_path, orientation: int, size=(40, 20)):
    """Left half red, right half blue, with an EXIF Orientation tag."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(tmp_path, image, f"o{orientation}.jpg", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    out = load_image(exif_rotated_jpeg(tmp_path, 6))
    assert out.size == (20, 40)
    top, bottom = pixel(out, (10, 5)), pixel(out, (10, 34))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_with_max_side(tmp_path):
    out = load_image(exif_rotated_jpeg(tmp_path, 8, size=(400, 200)), max_side=100)
    assert out.size == (50, 100)
    assert pixel(out, (25, 90))[0] > 200  # orientation 8: the stored left half at the bottom


@pytest.fixture
def draft_calls(monkeypatch):
    """Record every JPEG draft request and the size the decoder will produce."""
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


@pytest.mark.parametrize("max_side, expected", [(300, (300, 225)), (180, (180, 135)), (1000, (1000, 750)), (1999, (1999, 1499))])
def test_draft_decodes_at_least_max_side_then_fits_exactly(tmp_path, draft_calls, max_side, expected):
    image = Image.new("RGB", (2000, 1500), (10, 120, 200))
    image.paste((250, 250, 0), (0, 0, 1000, 1500))
    out = load_image(saved(tmp_path, image, "big.jpg", quality=90), max_side=max_side)
    assert out.size == expected
    (mode, size, decoded), = draft_calls
    assert mode == "RGB" and size == (max_side, max_side)
    assert min(decoded) >= max_side or decoded == (2000, 1500)  # DCT scaling never goes below
    assert (2000 // decoded[0]) in (1, 2, 4, 8)
    left, right = pixel(out, (2, expected[1] // 2)), pixel(out, (expected[0] - 3, expected[1] // 2))
    assert left[0] > 230 and left[2] < 30 and right[2] > 180


def test_draft_scales_by_eight_for_a_small_target(tmp_path, draft_calls):
    load_image(saved(tmp_path, Image.new("RGB", (2000, 1500)), "big.jpg"), max_side=150)
    assert draft_calls[0][2] == (250, 188)


def test_multi_picture_jpeg_is_drafted_and_gives_its_first_picture(tmp_path, draft_calls):
    pictures = [Image.new("RGB", (800, 600), (255, 0, 0)), Image.new("RGB", (800, 600), (0, 0, 255))]
    pictures[0].save(tmp_path / "stereo.mpo", save_all=True, append_images=pictures[1:])
    assert stored(tmp_path / "stereo.mpo", "format") == "MPO"
    out = load_image(tmp_path / "stereo.mpo", max_side=100)
    assert out.size == (100, 75) and pixel(out)[0] > 240 and pixel(out)[2] < 15
    assert draft_calls and draft_calls[0][2] == (200, 150)  # 1/4: the largest scale keeping >= 100
    check_image_file(tmp_path / "stereo.mpo")


def test_small_images_are_never_upscaled(tmp_path, draft_calls):
    for name in ("tiny.jpg", "tiny.png"):
        assert load_image(saved(tmp_path, Image.new("RGB", (100, 80)), name), max_side=300).size == (100, 80)
    assert load_image(tmp_path / "tiny.png", max_side=50).size == (50, 40)  # non-JPEGs are resized too


def test_bad_max_side():
    with pytest.raises(ValueError, match="max_side"):
        load_image(Image.new("RGB", (4, 4)), max_side=0)


# --- failures ----------------------------------------------------------------------

def write_bad_files(folder):
    """Broken files every reader must survive; returns {name: reason fragment}."""
    jpeg = io.BytesIO()
    noisy_rgb(96, 96).save(jpeg, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: int(len(jpeg.getvalue()) * 0.6)])
    png = io.BytesIO()
    noisy_rgb(64, 64).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    return {"truncated.jpg": "truncated", "truncated.png": "truncated", "empty.jpg": "empty", "text.jpg": "not a recognised image"}


def test_bad_files_raise_decode_errors_with_path_and_reason(tmp_path):
    for name, reason in write_bad_files(tmp_path).items():
        with pytest.raises(ImageDecodeError) as info:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and reason in info.value.reason, name


def test_missing_file_folder_and_empty_bytes(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        load_image(io.BytesIO(b"GIF89a but not really"))


def test_decode_error_keeps_its_reason_through_pickling(tmp_path):
    (tmp_path / "text.jpg").write_text("nope")
    with pytest.raises(ImageDecodeError) as info:
        load_image(tmp_path / "text.jpg")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.reason == info.value.reason and str(copy) == str(info.value)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixels: enough to trip size checks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(png_header_only(30_000, 30_000))  # 900 MP: Pillow's own limit
    (tmp_path / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        check_image_file(tmp_path / "bomb.png")
    monkeypatch.setattr(decode_module, "MAX_PIXELS", 1000)  # our limit, independent of Pillow's
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(Image.new("RGB", (40, 30)))
    assert load_image(Image.new("RGB", (30, 30))).size == (30, 30)


# --- check_image_file (the scan's cheap test) -------------------------------------

def test_check_accepts_every_good_format(tmp_path):
    source = noisy_rgb(16, 12)
    names = ["a.jpg", "a.png", "a.bmp", "a.gif", "a.webp", "a.tif", "a.ppm"]
    for name in names:
        source.save(tmp_path / name)
        check_image_file(tmp_path / name)
    check_image_file(saved(tmp_path, source.convert("L"), "a.pgm"))
    check_image_file(saved(tmp_path, source.convert("1"), "a.pbm"))


def test_check_rejects_bad_files_with_reasons(tmp_path):
    for name, reason in write_bad_files(tmp_path).items():
        with pytest.raises(ImageDecodeError) as info:
            check_image_file(tmp_path / name)
        assert reason in info.value.reason, name


def test_check_rejects_a_truncated_small_gif(tmp_path):
    data = io.BytesIO()
    noisy_rgb(64, 64).save(data, format="GIF")
    (tmp_path / "cut.gif").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ImageDecodeError):
        check_image_file(tmp_path / "cut.gif")


def test_jpeg_with_data_after_its_end_marker_is_complete(tmp_path):
    """Motion photos and some cameras append data after the image's end marker."""
    data = io.BytesIO()
    noisy_rgb(64, 48).save(data, format="JPEG")
    (tmp_path / "motion.jpg").write_bytes(data.getvalue() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    check_image_file(tmp_path / "motion.jpg")
    assert load_image(tmp_path / "motion.jpg").size == (64, 48)


def test_truncated_jpeg_with_an_embedded_thumbnail_is_caught(tmp_path):
    """The thumbnail's end marker (in an APP segment, before the scan) must not count."""
    thumb, main = io.BytesIO(), io.BytesIO()
    noisy_rgb(8, 8).save(thumb, format="JPEG")
    noisy_rgb(96, 96, seed=1).save(main, format="JPEG")
    payload = b"THMB" + thumb.getvalue()
    app15 = b"\xff\xef" + struct.pack(">H", len(payload) + 2) + payload
    whole = main.getvalue()[:2] + app15 + main.getvalue()[2:]
    (tmp_path / "whole.jpg").write_bytes(whole)
    check_image_file(tmp_path / "whole.jpg")
    cut = whole[: int(len(whole) * 0.7)]
    assert b"\xff\xd9" in cut  # the thumbnail's end marker survives the cut
    (tmp_path / "cut.jpg").write_bytes(cut)
    with pytest.raises(ImageDecodeError, match="truncated"):
        check_image_file(tmp_path / "cut.jpg")
