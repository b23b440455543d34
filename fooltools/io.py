"""Image files in and out, and the differentiable preprocessing in front of a model.

Images are float32 arrays in [0, 1], channels last: ``(H, W, 3)`` or batched ``(N, H, W, 3)``.
The preprocessing functions use only ``jax.numpy``/``jax.image``, so an attack can take
gradients with respect to the user's image at its own resolution and save exactly that image.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import secrets
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fooltools.errors import FoolError, ImageError, one_line

SAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "data" / "samples"
_SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The 256 values of an 8-bit sample, correctly rounded. read_image and quantize both look them
# up rather than divide: XLA turns x / 255 into x * (1 / 255), which is off by an ulp at times.
_LEVELS8 = np.arange(256, dtype=np.float32) / np.float32(255)

# Pillow decodes the colour types of 16-bit PNGs with an unpacker that keeps only the high byte
# of each sample. Decoding the same data again with the raw mode below (same bytes per pixel, so
# the PNG filters are undone identically) yields the low bytes too. LA;16B has no such twin, but
# reading it as 8-bit RGBA gives gray-high, gray-low, alpha-high, alpha-low.
_PNG16_TWIN = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}

# The most resize_shorter stretches the longer side, in multiples of the shorter one's target.
# Its antialiased resize builds a dense (new x old) weight matrix per axis: a 12000x1 PNG,
# whose longer side became 2.7 million pixels for a 224 model, asked for 129 GB. 32:1 is past
# any panorama (360-degree ones are 2:1, stitched strips rarely beyond 10:1), and there the
# model's centre crop sees 1/32 of the picture; a 32:1 image at Pillow's size limit (179
# megapixels, 75680 x 2365) needs 2.2 GB of weights for a 224 model.
MAX_ASPECT = 32

# EXIF orientation -> numpy operation that makes the picture upright (same as
# PIL.ImageOps.exif_transpose, but also usable on the 16-bit arrays Pillow has no mode for).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _decode(path: str) -> np.ndarray:
    """Decode ``path`` to an upright float32 array of shape (H, W, C) with C in {1, 3}."""
    with Image.open(path) as im:
        tile = im.tile[0] if len(im.tile) == 1 else None
        twin = _PNG16_TWIN.get(tile[3]) if im.format == "PNG" and tile else None
        orientation = im.getexif().get(0x0112, 1)
        # load() raises on truncated data as long as ImageFile.LOAD_TRUNCATED_IMAGES is False
        # (Pillow's default); without it a cut-off JPEG would come back padded with grey.
        im.load()
        if twin is not None:
            with Image.open(path) as low:
                first = low.tile[0]  # a NamedTuple since Pillow 11, a plain tuple before
                low.tile = [first._replace(args=twin) if hasattr(first, "_replace") else
                            (*first[:3], twin)]  # fmt: skip
                low.load()
                lo = np.asarray(low, dtype=np.uint16)
            hi = np.asarray(im, dtype=np.uint16)
            hi, lo = (lo[..., :1], lo[..., 1:2]) if twin == "RGBA" else (hi[..., :3], lo[..., :3])
            arr = (hi << 8 | lo) / np.float32(65535)
        elif im.mode.startswith("I;16") or im.mode == "I":
            # "I" is how older Pillow and TIFF hand over 16-bit gray; anything wider is clipped.
            arr = np.clip(np.asarray(im, dtype=np.float32) / 65535, 0, 1)[..., None]
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)[..., None]
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
            # Clipped, a float TIFF of 0-255 values was a white image, classified as such.
            if not PIXEL_RANGE[0] <= lo <= hi <= PIXEL_RANGE[1]:  # also NaN
                raise ImageError(
                    f"floating-point image with values in [{lo:g}, {hi:g}], expected [0, 1]: {path}"
                )
            arr = np.clip(arr, 0, 1)
        elif im.mode in ("1", "L"):
            arr = _LEVELS8[np.asarray(im.convert("L"))][..., None]
        else:
            # Palette images go through RGBA so that a transparent index converts cleanly;
            # alpha is then dropped, i.e. transparent pixels keep whatever colour they store.
            rgba = "A" in im.mode or im.mode in ("P", "PA")
            arr = _LEVELS8[np.asarray(im.convert("RGBA" if rgba else "RGB"))[..., :3]]
    return np.ascontiguousarray(_ORIENT.get(orientation, lambda a: a)(arr), dtype=np.float32)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as upright RGB.

    Reads anything Pillow reads (JPEG, PNG incl. 16-bit, GIF's first frame, BMP, TIFF, WebP,
    ...). The EXIF orientation is applied, gray is replicated to three channels, 16-bit PNG
    samples and 16-bit gray keep their precision (divided by 65535; a 16-bit colour TIFF
    reaches us as Pillow's 8-bit RGB) and an alpha channel is dropped (not composited).
    Truncated files are rejected as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps
    Pillow's default, False, and so are images over twice ``PIL.Image.MAX_IMAGE_PIXELS``
    (179 megapixels by default; Pillow's guard against decompression bombs, whose warning
    below that is silenced).

    Args:
        path: the image file.

    Returns:
        float32 array of shape (H, W, 3) with values in [0, 1].

    Raises:
        ImageError: the file is missing, a directory, empty, not an image, truncated, corrupt
            or over Pillow's size limit; the message is one line naming the path.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ImageError(f"no such file: {name}")
    if os.path.isdir(name):
        raise ImageError(f"is a directory, not an image: {name}")
    try:
        if os.path.getsize(name) == 0:
            raise ImageError(f"empty file, not an image: {name}")
        with warnings.catch_warnings():
            # Pillow warns from MAX_IMAGE_PIXELS (89 megapixels) and refuses from twice that,
            # a DecompressionBombError that becomes the ImageError below: the refusal is the
            # limit, the warning only a second, multi-line message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            arr = _decode(name)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image file (or a format Pillow cannot read): {name}") from None
    except PermissionError:
        raise ImageError(f"permission denied: {name}") from None
    except Exception as err:  # Pillow's plugins raise a zoo of exception types
        raise ImageError(f"cannot read image {name}: {one_line(err)}") from err
    if arr.size == 0:
        raise ImageError(f"image has zero size ({arr.shape[1]}x{arr.shape[0]}): {name}")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def require_float(image: np.ndarray | jax.Array, what: str = "image") -> None:
    """Refuse an image of integer dtype where floats in [0, 1] are expected.

    An 8-bit array (e.g. ``np.asarray(PIL.Image.open(path))``) taken as floats is 0 to 255:
    clipped to [0, 1] it is a nearly white image, so a model or a PNG would silently get
    the wrong picture.

    Args:
        image: Array of any shape (a tracer too: only its dtype is read).
        what: What the message calls it.

    Raises:
        ValueError: ``image`` has an integer dtype.
    """
    dtype = image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype
    if np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"{what} has integer dtype {dtype}; expected floats in [0, 1] (divide 8-bit "
            "pixels by 255, or read files with fooltools.io.read_image)"
        )


# The values accepted where images in [0, 1] are expected and clipped there: resampling
# overshoot (a Lanczos resize's ringing is a few percent) passes, any other scale (8-bit
# values as floats, normalised images) does not.
PIXEL_RANGE = (-0.5, 1.5)


def require_pixel_range(image: np.ndarray | jax.Array, what: str = "image") -> None:
    """Refuse a concrete image whose values are not in :data:`PIXEL_RANGE` (or are NaN).

    Args:
        image: Array of any shape (not a tracer: its values are read).
        what: What the message calls it.

    Raises:
        ValueError: A value outside :data:`PIXEL_RANGE`, or NaN.
    """
    lo, hi = (float(v) for v in jax.device_get((jnp.min(image), jnp.max(image))))
    if not PIXEL_RANGE[0] <= lo <= hi <= PIXEL_RANGE[1]:  # also NaN
        raise ValueError(
            f"{what} has values in [{lo:g}, {hi:g}]; expected images in [0, 1] (8-bit "
            "pixels: divide by 255)"
        )


def to_uint8(image: np.ndarray | jax.Array) -> np.ndarray:
    """Round an image to 8 bits the way :func:`write_png` stores it.

    Args:
        image: float array of any shape, nominally in [0, 1]; values outside are clipped.
            A uint8 array is already 8-bit and is returned as it is (a copy).

    Returns:
        uint8 array of the same shape, ``round(clip(x, 0, 1) * 255)``.

    Raises:
        ValueError: the image contains NaN or infinity, or has an integer dtype other
            than uint8 (0..255 or 0..1 cannot be told apart).
    """
    if getattr(image, "dtype", None) == np.uint8:
        return np.array(image)
    require_float(image)
    # float32 arithmetic, as in quantize(), so that both pick the same 8-bit level.
    x = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("image contains NaN or infinite values")
    return np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)


@jax.custom_jvp
def quantize(image: jax.Array) -> jax.Array:
    """Snap an image to the 8-bit grid, the values it has after a PNG round trip.

    The forward value is exactly ``round(clip(x, 0, 1) * 255) / 255``, so that
    ``read_image(write_png(p, x)) == quantize(x)``. The gradient is straight-through: the
    rounding is treated as the identity (the clip still zeroes gradients outside [0, 1]).

    Args:
        image: float array of any shape.

    Returns:
        float32 array of the same shape with values in {0, 1/255, ..., 1}.

    Raises:
        ValueError: ``image`` has an integer dtype (8-bit pixels gave a 0/1 image).
    """
    require_float(image)
    x = jnp.asarray(image, dtype=jnp.float32)
    # _LEVELS8[k] without the table's gather (0.56 ms per 224x224 image on XLA:CPU, a
    # quarter of a CPPN render) or a division (see _LEVELS8): K = 65793 k is exact
    # (< 2^24) and k / 255 = K 2^-24 (1 + 2^-24 + 2^-48 ...), so the one rounding of the
    # sum of the exact terms K 2^-24 + K 2^-48 gives the correctly rounded k / 255 for
    # every k (checked against _LEVELS8 for all 256 in tests/test_io.py).
    big = jnp.round(jnp.clip(x, 0, 1) * 255) * 65793.0
    return big * 2.0**-24 + big * 2.0**-48


@quantize.defjvp
def _quantize_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple:
    (x,), (t,) = primals, tangents
    return quantize(x), jnp.where((x >= 0) & (x <= 1), t, 0).astype(jnp.float32)


def write_png(path: str | os.PathLike[str], image: np.ndarray | jax.Array) -> pathlib.Path:
    """Save an image as an 8-bit PNG, atomically, creating parent directories.

    Written next to the destination, then moved there with ``os.replace``: never half a file.

    Args:
        path: destination; always PNG-encoded whatever its suffix.
        image: float array of shape (H, W, 3) or (H, W) in [0, 1], rounded by :func:`to_uint8`,
            or a uint8 array of that shape (written as it is).

    Returns:
        The path written.

    Raises:
        ValueError: the image has the wrong shape, non-finite values, or an integer dtype
            other than uint8.
        ImageError: the file cannot be written (permissions, disk full, ...).
    """
    pixels = to_uint8(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)) or not pixels.size:
        raise ValueError(f"expected a non-empty (H, W, 3) or (H, W) image, got {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def make_dir(path: str | os.PathLike[str]) -> pathlib.Path:
    """Create the output directory ``path`` and its parents where missing.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        FoolError: it cannot be created (a file in the way, permissions, a read-only disk).
    """
    out = pathlib.Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FoolError(f"cannot create directory {out}: {one_line(err)}") from err
    return out


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically, creating parent directories.

    Written to a temp file next to the destination, synced, then moved there with
    ``os.replace``: a killed process leaves the old file or the new one, never half a file.

    Raises:
        ImageError: the file cannot be written (permissions, disk full, ...).
    """
    dest = pathlib.Path(path)
    # The name is cut (in bytes) so that the temp file's fits NAME_MAX (255) whenever the
    # destination's does: a 250-character name failed with "File name too long".
    short = os.fsdecode(os.fsencode(dest.name)[:200])
    tmp = dest.with_name(f".{short}.{secrets.token_hex(6)}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666 lets the umask decide the final permissions (mkstemp: 0600).
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ImageError(f"cannot write {dest}: {one_line(err)}") from err
        raise
    return dest


def _check_image(x: jax.Array) -> jax.Array:
    # 8-bit pixels were cast to floats of 0..255 and normalised as such (max 373.9).
    require_float(x)
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected an (H, W, C) or (N, H, W, C) image, got shape {x.shape}")
    return x


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    th, tw = (size, size) if isinstance(size, (int, np.integer)) else size
    return int(th), int(tw)


def resize_shorter(x: jax.Array, size: int) -> jax.Array:
    """Resize so that the shorter side is ``size``, like torchvision's ``Resize(size)``.

    The longer side becomes ``int(size * long / short)``. Bilinear with antialiasing, which
    matches torch's ``interpolate(mode="bilinear", antialias=True, align_corners=False)``.

    Args:
        x: float image (H, W, C) or batch (N, H, W, C).
        size: target length of the shorter side, > 0.

    Returns:
        The resized image, same rank and dtype; ``x`` itself if the shorter side is ``size``.

    Raises:
        ImageError: the longer side would become more than :data:`MAX_ASPECT` times ``size``.
    """
    x = _check_image(x)
    if size <= 0:
        raise ValueError(f"resize size must be positive, got {size}")
    h, w = x.shape[-3], x.shape[-2]
    short, long = min(h, w), max(h, w)
    if short == size:
        return x  # no resampling: an image at the model's size passes through bit for bit
    new_long = int(size * long / short)
    if new_long > MAX_ASPECT * size:
        raise ImageError(
            f"image of {w}x{h} pixels is too elongated: with its shorter side resized to "
            f"{size}, its longer side would be {new_long} pixels (at most {MAX_ASPECT} x "
            f"{size}); crop it nearer to square"
        )
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    shape = (*x.shape[:-3], new_h, new_w, x.shape[-1])
    return jax.image.resize(x, shape, method="linear", antialias=True)


def center_crop(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """Crop the centre, like torchvision's ``CenterCrop`` (offsets rounded half to even).

    Args:
        x: float image (H, W, C) or batch (N, H, W, C).
        size: crop side, or (height, width).

    Returns:
        The crop, of shape (..., height, width, C).

    Raises:
        ImageError: the image is smaller than the crop.
    """
    x = _check_image(x)
    th, tw = _pair(size)
    h, w = x.shape[-3], x.shape[-2]
    if th > h or tw > w:
        raise ImageError(f"image of {w}x{h} pixels is smaller than the {tw}x{th} centre crop")
    if (th, tw) == (h, w):
        return x
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw, :]


def normalize(
    x: jax.Array, mean: float | Sequence[float], std: float | Sequence[float]
) -> jax.Array:
    """Return ``(x - mean) / std`` for an (H, W, C) or (N, H, W, C) image.

    ``mean`` and ``std`` are scalars or C per-channel values; the result has x's shape and dtype.
    """
    x = _check_image(x)
    return (x - jnp.asarray(mean, dtype=x.dtype)) / jnp.asarray(std, dtype=x.dtype)


def preprocess(
    x: jax.Array,
    *,
    size: int | tuple[int, int],
    mean: float | Sequence[float],
    std: float | Sequence[float],
    resize: int | None = None,
) -> jax.Array:
    """Resize the shorter side, centre-crop and normalise: the usual ImageNet evaluation.

    Args:
        x: float image (H, W, C) or batch (N, H, W, C) in [0, 1], any H and W.
        size: crop side, or (height, width).
        mean: scalar or per-channel mean.
        std: scalar or per-channel standard deviation.
        resize: shorter side before cropping; default the crop size (its larger side), so a
            ``size`` x ``size`` image goes through resize and crop unchanged.

    Returns:
        Normalised float image (..., height, width, C).
    """
    th, tw = _pair(size)
    x = resize_shorter(x, max(th, tw) if resize is None else resize)
    return normalize(center_crop(x, (th, tw)), mean, std)


def make_preprocess(
    *,
    size: int | tuple[int, int],
    mean: float | Sequence[float],
    std: float | Sequence[float],
    resize: int | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """Bind :func:`preprocess`'s keyword arguments into a jitted function of the image alone.

    Returns:
        ``f`` with ``f(x) == preprocess(x, size=size, mean=mean, std=std, resize=resize)``; it
        is differentiable and compiles once per input shape and dtype.
    """
    crop = _pair(size)
    # numpy copies, so later changes to the caller's lists cannot leak into the closure.
    mean_, std_ = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)

    @jax.jit
    def apply(x: jax.Array) -> jax.Array:
        return preprocess(x, size=crop, mean=mean_, std=std_, resize=resize)

    return apply


def images_in(directory: str | os.PathLike[str]) -> list[pathlib.Path]:
    """The image files directly in ``directory``, sorted by name.

    Image files are those with a suffix of a format Pillow reads (any case); hidden files
    and subdirectories are left out.

    Raises:
        ImageError: ``directory`` cannot be listed (one line naming it).
    """
    Image.init()  # registers every plugin's suffixes, not only the five preloaded ones
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    try:
        entries = list(pathlib.Path(directory).iterdir())
    except OSError as err:
        raise ImageError(f"cannot list {os.fspath(directory)}: {one_line(err)}") from None
    # One directory's entries: sorted as paths is sorted by name.
    return sorted(
        p
        for p in entries
        if p.suffix.lower() in readable and not p.name.startswith(".") and p.is_file()
    )


def sample_names() -> list[str]:
    """Names (file stems) of the bundled sample photos, sorted."""
    return sorted(p.stem for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in _SAMPLE_SUFFIXES)


def sample_path(name: str) -> pathlib.Path:
    """Path of a bundled sample photo (see ``data/samples/README.md`` for their licences).

    Args:
        name: a name from :func:`sample_names`, with or without its suffix ("cat", "cat.png").

    Raises:
        ImageError: no such sample; the message lists the available ones.
    """
    for path in sorted(SAMPLES_DIR.iterdir()):
        if path.suffix.lower() in _SAMPLE_SUFFIXES and name in (path.stem, path.name):
            return path
    raise ImageError(f"unknown sample {name!r}; available: {', '.join(sample_names())}")
