"""Tests for fooltools.io: reading, writing and the differentiable preprocessing."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageOps, features

from fooltools import io as fio
from fooltools.errors import FoolError, ImageError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def rgb8(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png16(samples: np.ndarray, color_type: int) -> bytes:
    """Hand-made 16-bit PNG (Pillow cannot write 16-bit colour), rows with None/Sub/Up filters."""
    h, w, ch = samples.shape
    rows, bpp, prev = [], 2 * ch, None
    for y in range(h):
        raw = np.frombuffer(samples[y].astype(">u2").tobytes(), np.uint8).astype(np.int32)
        kind = y % 3 if y else 1
        filtered = raw.copy()
        if kind == 1:  # Sub: the filter's reach depends on the bytes per pixel
            filtered[bpp:] = raw[bpp:] - raw[:-bpp]
        elif kind == 2:  # Up
            filtered = raw - prev
        rows.append(bytes([kind]) + (filtered % 256).astype(np.uint8).tobytes())
        prev = raw
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    idat = zlib.compress(b"".join(rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# --- reading ---------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path: Path) -> None:
    a = rgb8()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = fio.read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_array_equal(out, a.astype(np.float32) / 255)


def test_gray16_png_keeps_precision(tmp_path: Path) -> None:
    values = ((np.arange(6 * 9).reshape(6, 9) * 1201 + 3) % 65536).astype(np.uint16)
    assert np.any(values % 257)  # not representable in 8 bits
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = fio.read_image(str(tmp_path / "g16.png"))
    assert out.shape == (6, 9, 3)
    np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16)[..., 1], values)
    assert np.abs(out[..., 0] - values / 65535).max() < 0.5 / 65535


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (6, 4), (4, 2)])
def test_colour16_png_keeps_precision(tmp_path: Path, color_type: int, channels: int) -> None:
    samples = np.random.default_rng(1).integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    (tmp_path / "c16.png").write_bytes(png16(samples, color_type))
    out = fio.read_image(tmp_path / "c16.png")
    expected = samples[..., :3] if channels >= 3 else np.repeat(samples[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16), expected)


def test_gray_and_alpha_modes(tmp_path: Path) -> None:
    a = rgb8()
    gray = a[..., 0]
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray, a[..., 1]])).save(tmp_path / "la.png")
    rgba = np.dstack([a, np.zeros_like(gray)])  # fully transparent: colour must survive
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    want_gray = np.repeat(gray[..., None], 3, axis=-1) / np.float32(255)
    np.testing.assert_array_equal(fio.read_image(tmp_path / "l.png"), want_gray)
    np.testing.assert_array_equal(fio.read_image(tmp_path / "la.png"), want_gray)
    np.testing.assert_array_equal(fio.read_image(tmp_path / "rgba.png"), a / np.float32(255))


def test_float_tiff_in_0_1_is_read_other_scales_refused(tmp_path: Path) -> None:
    # Clipped to [0, 1], a float TIFF of 0-255 values was read as a white image.
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(values).save(tmp_path / "unit.tif")
    got = fio.read_image(tmp_path / "unit.tif")
    np.testing.assert_array_equal(got, np.repeat(values[..., None], 3, axis=-1))
    for name, bad in (("scaled.tif", values * 255), ("nan.tif", values * np.nan)):
        Image.fromarray(bad.astype(np.float32)).save(tmp_path / name)
        with pytest.raises(ImageError, match=r"floating-point image with values in \["):
            fio.read_image(tmp_path / name)


@pytest.mark.parametrize("transparency", [None, 2])
def test_palette_png(tmp_path: Path, transparency: int | None) -> None:
    im = Image.fromarray(rgb8()).quantize(colors=8)
    extra = {} if transparency is None else {"transparency": transparency}
    im.save(tmp_path / "p.png", **extra)
    assert Image.open(tmp_path / "p.png").mode == "P"
    want = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(fio.read_image(tmp_path / "p.png"), want)


@pytest.mark.parametrize(
    ("fmt", "suffix", "options"),
    [
        ("GIF", "gif", {}),
        ("BMP", "bmp", {}),
        ("TIFF", "tif", {}),
        ("WEBP", "webp", {"lossless": True}),
    ],
)
def test_other_formats(tmp_path: Path, fmt: str, suffix: str, options: dict) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    a = np.asarray(Image.fromarray(rgb8()).quantize(colors=16).convert("RGB"))  # GIF-exact
    extra = [Image.fromarray(255 - a)] if fmt == "GIF" else []
    Image.fromarray(a).save(tmp_path / f"x.{suffix}", fmt, save_all=bool(extra),
                            append_images=extra, **options)  # fmt: skip
    np.testing.assert_array_equal(fio.read_image(tmp_path / f"x.{suffix}"), a / np.float32(255))


def corner_image() -> np.ndarray:
    """20 rows x 40 columns, grey, with a red block in the top-left corner."""
    a = np.full((20, 40, 3), 128, np.uint8)
    a[:6, :6] = (255, 0, 0)
    return a


@pytest.mark.parametrize(("orientation", "corner"), [(6, "top-right"), (8, "bottom-left")])
def test_jpeg_exif_rotation(tmp_path: Path, orientation: int, corner: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(corner_image()).save(tmp_path / "r.jpg", quality=95, exif=exif)
    out = fio.read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # upright: the stored landscape becomes portrait
    rows = slice(0, 3) if corner.startswith("top") else slice(-3, None)
    cols = slice(-3, None) if corner.endswith("right") else slice(0, 3)
    np.testing.assert_allclose(out[rows, cols].mean(axis=(0, 1)), (1, 0, 0), atol=0.1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pillow(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb8(5, 8)).save(tmp_path / "o.png", exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")), np.float32) / 255
    np.testing.assert_array_equal(fio.read_image(tmp_path / "o.png"), want)


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb8(64, 80)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb8(64, 80)).save(buf, "PNG")
    return buf.getvalue()


def zero_width_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


BAD_FILES = {
    "text.png": lambda: b"this is not an image\n",
    "half.jpg": lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2],
    "noeoi.jpg": lambda: jpeg_bytes()[:-2],  # only the end-of-image marker is missing
    "half.png": lambda: png_bytes()[: len(png_bytes()) // 2],
    "header.png": lambda: png_bytes()[:40],
    "empty.jpg": lambda: b"",
    "zero.png": zero_width_png,
}


@pytest.mark.parametrize("name", [*BAD_FILES, "missing.jpg", "a directory"])
def test_bad_inputs_raise_one_line_image_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name in BAD_FILES:
        path.write_bytes(BAD_FILES[name]())
    elif name == "a directory":
        path.mkdir()
    with pytest.raises(ImageError) as info:
        fio.read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(info.value, FoolError)
    if name == "missing.jpg":
        assert message == f"no such file: {path}"


# --- writing ---------------------------------------------------------------------------------


def test_size_limit_is_pillows_error_without_its_warning(tmp_path: Path, monkeypatch) -> None:
    # As from 89 and 179 megapixels by default: Pillow warns above the limit, refuses above 2x.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (20, 10)).save(tmp_path / "warned.png")
    Image.new("RGB", (30, 10)).save(tmp_path / "refused.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fio.read_image(tmp_path / "warned.png").shape == (10, 20, 3)
    assert caught == []
    with pytest.raises(ImageError, match=r"refused\.png: Image size \(300 pixels\) exceeds limit"):
        fio.read_image(tmp_path / "refused.png")


def test_round_trip_equals_quantize(tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(-0.2, 1.2, (9, 13, 3)).astype(np.float32)
    x[0, :5, 0] = (np.arange(5) + 0.5) / 255  # ties
    out = fio.write_png(tmp_path / "new" / "dir" / "x.png", jnp.asarray(x))
    assert out == tmp_path / "new" / "dir" / "x.png"
    assert os.listdir(out.parent) == ["x.png"]  # no temporary left behind
    np.testing.assert_array_equal(fio.read_image(out), np.asarray(fio.quantize(x)))
    np.testing.assert_array_equal(fio.read_image(out), np.asarray(jax.jit(fio.quantize)(x)))


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 4, 3), elements=st.floats(-0.5, 1.5, width=32)))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, x: np.ndarray) -> None:
    path = fio.write_png(tmp_path_factory.mktemp("rt") / "x.png", x)
    np.testing.assert_array_equal(fio.read_image(path), np.asarray(fio.quantize(x)))
    np.testing.assert_array_equal(fio.to_uint8(x), np.round(np.asarray(fio.quantize(x)) * 255))


def test_quantize_gives_every_8_bit_level_exactly() -> None:
    # All 256 levels (and points just either side of each rounding midpoint), eager and
    # jitted: bit for bit the values read_image gives, i.e. k / 255 correctly rounded.
    k = np.arange(256, dtype=np.float32)
    x = np.concatenate([k, k - 0.499, k + 0.499]) / np.float32(255)
    want = (np.clip(np.round(x * 255), 0, 255) / np.float32(255)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(fio.quantize(x)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(fio.quantize)(x)), want)
    np.testing.assert_array_equal(np.asarray(fio.quantize(k / 255)), fio._LEVELS8)


def test_write_gray_and_overwrite(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    path = fio.write_png(tmp_path / "g.png", np.zeros((4, 5, 3)))
    fio.write_png(path, x)
    np.testing.assert_array_equal(fio.read_image(path)[..., 2], np.asarray(fio.quantize(x)))


def test_to_uint8_rounds_and_rejects_nan() -> None:
    x = np.array([0.6 / 255, 254.4 / 255, 254.6 / 255, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(fio.to_uint8(x), [1, 254, 255, 0, 255])
    with pytest.raises(ValueError, match="NaN"):
        fio.to_uint8(np.array([np.nan]))


def test_write_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        fio.write_png(tmp_path / "file" / "x.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="image"):
        fio.write_png(tmp_path / "x.png", np.zeros((2, 2, 4)))


def test_quantize_gradient_is_straight_through() -> None:
    x = jnp.array([-0.1, 0.3, 0.5, 1.2])
    np.testing.assert_array_equal(jax.grad(lambda v: fio.quantize(v).sum())(x), [0, 1, 1, 0])


# --- preprocessing ---------------------------------------------------------------------------


def test_model_sized_image_passes_through_bitwise() -> None:
    x = jnp.asarray(np.random.default_rng(3).random((224, 224, 3), np.float32))
    assert fio.resize_shorter(x, 224) is x
    np.testing.assert_array_equal(fio.center_crop(x, 224), x)
    np.testing.assert_array_equal(fio.preprocess(x, size=224, mean=0.0, std=1.0), x)


@pytest.mark.parametrize(
    ("shape", "want"),
    [((300, 451, 3), (224, 336, 3)), ((451, 300, 3), (336, 224, 3)), ((2, 7, 5, 1), (2, 4, 3, 1))],
)
def test_resize_shorter_shapes(shape: tuple, want: tuple) -> None:
    size = 3 if len(shape) == 4 else 224
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    assert jax.eval_shape(lambda x: fio.resize_shorter(x, size), spec).shape == want


def test_resize_refuses_an_image_it_would_stretch_past_32_to_1() -> None:
    # A 12000x1 strip: its resize's weights for a 224 model were 129 GB.
    strip = jax.ShapeDtypeStruct((1, 12000, 3), jnp.float32)
    with pytest.raises(ImageError, match=r"12000x1 pixels is too elongated: .* 2688000 pixels"):
        jax.eval_shape(lambda x: fio.resize_shorter(x, 224), strip)
    wide = jax.ShapeDtypeStruct((100, 3200, 3), jnp.float32)  # exactly 32:1 still resizes
    assert jax.eval_shape(lambda x: fio.resize_shorter(x, 224), wide).shape == (224, 7168, 3)


def test_resize_keeps_constant_image() -> None:
    x = jnp.full((9, 14, 3), 0.25)
    out = fio.resize_shorter(x, 4)
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_center_crop_geometry() -> None:
    x = jnp.arange(7 * 10 * 1, dtype=jnp.float32).reshape(7, 10, 1)
    # top = round(1.5) = 2, left = round(3.0) = 3 (torchvision's convention)
    np.testing.assert_array_equal(fio.center_crop(x, 4), x[2:6, 3:7])
    # round(2.5) = 2: Python rounds halves to even, as torchvision does
    np.testing.assert_array_equal(fio.center_crop(x, (2, 5)), x[2:4, 2:7])
    batch = jnp.stack([x, x + 1])
    assert fio.center_crop(batch, (3, 2)).shape == (2, 3, 2, 1)
    with pytest.raises(ImageError, match="smaller"):
        fio.center_crop(x, 8)


def test_normalize() -> None:
    x = jnp.ones((2, 2, 3)) * 0.5
    want = (0.5 - np.array(MEAN)) / STD
    np.testing.assert_allclose(fio.normalize(x, MEAN, STD)[0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(fio.normalize(x, 0.5, 0.5), 0.0)


def test_batched_matches_unbatched_and_jit_matches_eager() -> None:
    rng = np.random.default_rng(4)
    batch = jnp.asarray(rng.random((2, 21, 31, 3), np.float32))
    f = fio.make_preprocess(size=12, mean=MEAN, std=STD, resize=14)
    eager = fio.preprocess(batch, size=12, mean=MEAN, std=STD, resize=14)
    assert eager.shape == (2, 12, 12, 3)
    np.testing.assert_allclose(f(batch), eager, atol=1e-5)
    for i in range(2):
        one = fio.preprocess(batch[i], size=12, mean=MEAN, std=STD, resize=14)
        np.testing.assert_allclose(one, eager[i], atol=1e-5)


def test_gradient_reaches_odd_sized_input() -> None:
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.random((301, 451, 3), np.float32))
    w = jnp.asarray(rng.standard_normal((224, 224, 3), np.float32))
    f = fio.make_preprocess(size=224, mean=MEAN, std=STD)

    def terms(v: jax.Array) -> jax.Array:
        return jnp.sin(f(v)) * w

    grad = jax.grad(lambda v: terms(v).sum())(x)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0
    assert float(jnp.abs(grad[:, 0]).max()) == 0  # cropped away
    eps = 1e-2
    for r, c, ch in [(150, 225, 0), (10, 100, 1), (290, 350, 2)]:
        bump = jnp.zeros_like(x).at[r, c, ch].set(eps)
        # summing the per-output differences avoids cancellation in two large totals
        numeric = float((terms(x + bump) - terms(x - bump)).sum()) / (2 * eps)
        assert numeric == pytest.approx(float(grad[r, c, ch]), rel=2e-2, abs=1e-3)


# --- samples ---------------------------------------------------------------------------------


def test_samples() -> None:
    assert fio.sample_names() == ["astronaut", "cat", "coffee", "rocket"]
    assert fio.sample_path("cat") == fio.sample_path("cat.png") == fio.SAMPLES_DIR / "cat.png"
    assert fio.read_image(fio.sample_path("cat")).shape == (300, 451, 3)
    assert (fio.SAMPLES_DIR / "README.md").is_file()
    with pytest.raises(ImageError, match="astronaut, cat, coffee, rocket"):
        fio.sample_path("dog")


def test_write_bytes_atomic_takes_the_longest_file_name(tmp_path):
    # Its temp file's name added 19 characters: a 254-byte name failed as too long.
    for name in ("a" * 250 + ".png", "é" * 125 + ".png"):
        dest = fio.write_bytes_atomic(tmp_path / name, b"data")
        assert dest.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a" * 250 + ".png", "é" * 125 + ".png"]
    )


def test_uint8_images_are_written_as_they_are_other_integers_refused(tmp_path) -> None:
    # A uint8 image (draw_boxes' output, np.asarray(Image.open(...))) taken as floats
    # 0..255 and clipped to [0, 1] was written as a white PNG without a word.
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    back = fio.read_image(fio.write_png(tmp_path / "a.png", pixels))
    np.testing.assert_array_equal(fio.to_uint8(back), pixels)
    with pytest.raises(ValueError, match="integer dtype int64"):
        fio.write_png(tmp_path / "b.png", pixels.astype(np.int64))
    assert not (tmp_path / "b.png").exists()


def test_8bit_images_are_refused_by_the_pixel_functions() -> None:
    # Cast to floats of 0..255: preprocess normalised them to a max of 373.9, quantize
    # made a 0/1 image, without a word (Classifier.preprocess already refused them).
    x = np.full((2, 8, 8, 3), 200, np.uint8)
    for f in (
        fio.quantize,
        lambda x: fio.normalize(x, 0.5, 0.5),
        lambda x: fio.preprocess(x, size=4, mean=0.5, std=0.5),
        lambda x: fio.resize_shorter(x, 4),
        lambda x: fio.center_crop(x, 4),
    ):
        with pytest.raises(ValueError, match="integer dtype uint8"):
            f(x)
