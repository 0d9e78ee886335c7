"""Image checks for curation: decode, check, hash and resize downloaded images.

Every downloaded body goes through :func:`check_image`, which never raises for
bad bytes: it returns an :class:`ImageCheck` row (the image part of
``curate.records.IMAGES_SCHEMA``) with ``status`` ``ok`` or ``rejected`` and,
when rejected, one ``reason``:

- ``decode_error``: Pillow cannot identify or fully decode the bytes (a
  truncated file included: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False);
- ``bomb``: more pixels than ``ImageConfig.max_pixels``, checked from the
  header before any pixel is decoded;
- ``not_a_photo_format``: a format outside ``ImageConfig.formats`` (GIF, ICO,
  ...), or markup and documents that are no images at all (SVG, HTML, PDF);
- ``too_small``: the shorter side is below ``min_side_px``;
- ``too_elongated``: the longer side is more than ``max_aspect`` times the
  shorter.

Kept images get a 64-bit perceptual hash (pHash: DCT of a 32x32 grayscale,
the 8x8 lowest frequencies thresholded at their median), computed with numpy;
near duplicates (resized, recompressed) lie a few bits apart in Hamming
distance, different images about 32 apart.

JPEGs are decoded at reduced scale (libjpeg's 1/2, 1/4, 1/8 DCT scaling via
``Image.draft``) whenever only a smaller image is needed: the luma channel at
the hash size for the check, and at least the output size for the export.
This does the work of the first, most expensive steps of the downscale inside
the decoder; ``benchmarks/bench_curate_images.py`` measures it.

:func:`export_jpeg` turns accepted bytes into the JPEG of a shard sample:
decode (oriented by EXIF, converted to RGB with alpha composited onto white),
:func:`resize` by a rule, and :func:`encode_jpeg` with no metadata, so that the
same bytes always give the same output bytes. A colour JPEG that needs no
change is copied instead, its metadata stripped (:func:`strip_jpeg_metadata`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from multiprocessing.pool import AsyncResult
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageFile

from kg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

OK = "ok"
REJECTED = "rejected"
DECODE_ERROR = "decode_error"
BOMB = "bomb"
NOT_A_PHOTO_FORMAT = "not_a_photo_format"
TOO_SMALL = "too_small"
TOO_ELONGATED = "too_elongated"

# Formats that carry photographs, as Pillow names them. MPO is the JPEG that
# cameras write with a second, smaller picture inside; its first frame is the
# photo. GIF is left out by default: 256 colours at most, and on the web mostly
# animations, icons and "image not found" placeholders; listed in ``formats``,
# its first frame is checked like any photo.
PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "AVIF", "BMP", "TIFF")
# Pillow's own default for Image.MAX_IMAGE_PIXELS: 1 GiB of RGB at 4 bytes a
# pixel, divided by three; about 9,500 x 9,500 pixels.
DEFAULT_MAX_PIXELS = 89_478_485
# Formats whose decoder can scale down while decoding (Image.draft).
_DRAFTABLE = frozenset({"JPEG", "MPO"})
# Formats whose EXIF block, if any, is in info["exif"] after opening (TIFF keeps
# the orientation among its own tags instead).
_EXIF_IN_INFO = frozenset({"JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF"})
# What Pillow raises on malformed bytes: its plugins are written in Python and
# C, and a corrupt file can trip any of these while the header is parsed or the
# pixels are decoded. Anything else is a bug and propagates.
_DECODE_ERRORS = (
    OSError,  # UnidentifiedImageError, truncated files, broken data streams
    SyntaxError,  # Pillow's "not a ... file" from several plugins
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)
_WHITE = (255, 255, 255)

RESIZE_RULES = ("shorter_side", "longer_side", "center_crop", "none")
# The filters a resize may use. Hamming (the default) comes within half a dB
# of OpenCV's area filter (INTER_AREA, what img2dataset shrinks with) against
# a Lanczos reference, at about 60% of bicubic's cost in Pillow; bicubic and
# Lanczos are sharper (4-5 dB closer to the reference) and slower; box is the
# cheapest but, at scales between whole numbers, softer than an area filter
# (benchmarks/bench_curate_images.py measures hamming and bicubic).
RESAMPLE_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# An image more than twice the output size (a large PNG or WEBP; JPEGs were
# already scaled down while decoding) is first shrunk by a whole factor with a
# box filter, leaving the filter above at most a 2-4x reduction: much faster,
# and within a fraction of a dB of the direct resample.
REDUCING_GAP = 2.0

# The transposition that undoes each EXIF orientation (tag 0x0112); 5 to 8
# swap width and height. The same table as ImageOps.exif_transpose.
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Key = TypeVar("Key")


class ImageDecodeError(InputError):
    """Image bytes could not be turned into pixels; ``reason`` says why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageConfig:
    """What makes an image acceptable, and how it is hashed.

    ``max_pixels`` has the meaning of Pillow's ``Image.MAX_IMAGE_PIXELS``
    (width times height), but is checked here for each image; Pillow's own
    global still refuses, whatever this says, images of more than twice its
    value (it raises while opening), so a larger limit needs that global raised.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side_px: int = 64
    max_aspect: float = 3.0  # longer side / shorter side
    formats: tuple[str, ...] = PHOTO_FORMATS
    hash_size_px: int = 32  # the side of the grayscale image the DCT reads

    def __post_init__(self) -> None:
        # Hydra hands lists; formats compare in Pillow's upper case.
        object.__setattr__(self, "formats", tuple(f.upper() for f in self.formats))
        positive = {
            "max_pixels": self.max_pixels,
            "min_side_px": self.min_side_px,
            "hash_size_px": self.hash_size_px,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"curate images: {name}={value}; give 1 or more")
        if self.max_aspect < 1:
            raise ConfigError(
                f"curate images: max_aspect={self.max_aspect}; it is the longer "
                "side over the shorter, so give 1.0 or more"
            )
        if self.hash_size_px < 8:
            raise ConfigError(
                f"curate images: hash_size_px={self.hash_size_px}; the hash keeps "
                "8x8 frequencies of it, so give 8 or more (32 is usual)"
            )


@dataclass(frozen=True)
class ResizeConfig:
    """How an accepted image becomes the JPEG of a shard sample."""

    rule: str = "shorter_side"  # one of RESIZE_RULES
    size_px: int = 256
    upscale: bool = False  # enlarge images smaller than size_px
    quality: int = 95  # JPEG quality, 1-100 (Pillow's scale)
    resample: str = "hamming"  # one of RESAMPLE_FILTERS
    # A colour JPEG that needs no resizing or turning is copied with its
    # metadata stripped rather than decoded and re-encoded: no second loss of
    # quality, and several times faster for small images.
    keep_jpeg: bool = True

    def __post_init__(self) -> None:
        _check_rule(self.rule, self.size_px, self.resample)
        if not 1 <= self.quality <= 100:
            raise ConfigError(
                f"curate resize: quality={self.quality}; give 1 to 100 (95 is "
                "the usual top: above it files grow with no visible gain)"
            )


@dataclass
class ImageCheck:
    """One image's check: the image columns of ``IMAGES_SCHEMA``.

    ``format`` and ``mode`` are Pillow's names before any conversion; width and
    height are after EXIF orientation for images that got as far as decoding,
    as stored for those rejected from their header. ``phash`` is None for
    rejected images.
    """

    image_id: str
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None
    status: str = OK
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


class _Rejection(Exception):
    """Internal: stops a check with a reason and a detail for the log."""

    def __init__(self, reason: str, detail: str, image_format: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.image_format = image_format


# --------------------------------------------------------------------------
# Checking


def check_image(data: bytes, config: ImageConfig | None = None) -> ImageCheck:
    """Identify, check, decode and hash one image's bytes.

    Returns an :class:`ImageCheck` with ``status`` ``ok`` and a ``phash``, or
    ``rejected`` and a ``reason``; bad bytes never raise.
    """
    config = config or ImageConfig()
    check = ImageCheck(image_id=hashlib.sha256(data).hexdigest())
    try:
        _check_into(check, data, config)
    except _Rejection as rejection:
        check.status, check.reason = REJECTED, rejection.reason
        check.format = check.format or rejection.image_format
        log.debug("image %s rejected: %s (%s)", check.image_id, check.reason, rejection)
    return check


def _check_into(check: ImageCheck, data: bytes, config: ImageConfig) -> None:
    """Fill ``check`` step by step; raise _Rejection at the first failure."""
    image = _open(data)
    check.format, check.mode = image.format, image.mode
    check.width, check.height = image.size
    if image.format not in config.formats:
        raise _Rejection(NOT_A_PHOTO_FORMAT, f"format {image.format}")
    _check_pixels(image.size, config)
    _check_shape(image.size, config)

    # Only the luma at about the hash size is needed: JPEGs decode it at up to
    # 1/8 scale, and the decoder still reads every byte, so truncation shows.
    image.draft("L", (config.hash_size_px, config.hash_size_px))
    _load(image)
    orientation = exif_orientation(image)
    if orientation >= 5:
        check.width, check.height = check.height, check.width
    oriented = orient(image, orientation)
    check.phash = _checked_hash(oriented, config.hash_size_px)


def _checked_hash(image: Image.Image, size_px: int) -> int:
    """The hash of a decoded image; a mode Pillow cannot convert is a decode error."""
    try:
        return perceptual_hash(image, size_px=size_px)
    except _DECODE_ERRORS as error:
        raise _Rejection(DECODE_ERROR, f"mode {image.mode}: {error}") from error


def _check_shape(size: tuple[int, int], config: ImageConfig) -> None:
    shorter, longer = sorted(size)
    if shorter < config.min_side_px:
        raise _Rejection(TOO_SMALL, f"{size[0]}x{size[1]}")
    if longer > config.max_aspect * shorter:
        raise _Rejection(TOO_ELONGATED, f"{size[0]}x{size[1]}")


def _open(data: bytes) -> ImageFile.ImageFile:
    """Open image bytes: read the header, decode no pixels."""
    try:
        # Pillow warns between its limit and twice it: _check_pixels applies
        # the config's limit instead, so that the config, not the global, decides.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _Rejection(BOMB, str(error)) from error
    except _DECODE_ERRORS as error:
        markup = sniff_non_image(data)
        if markup:
            raise _Rejection(NOT_A_PHOTO_FORMAT, markup, markup) from error
        raise _Rejection(DECODE_ERROR, f"{type(error).__name__}: {error}") from error
    return image


def _check_pixels(size: tuple[int, int], config: ImageConfig) -> None:
    """Refuse a bomb from its header, before a single pixel is decoded."""
    width, height = size
    if width * height > config.max_pixels:
        raise _Rejection(BOMB, f"{width}x{height} is over {config.max_pixels:,} pixels")


def _load(image: ImageFile.ImageFile) -> None:
    """Decode the pixels; any failure, truncation included, is a decode error."""
    try:
        image.load()
    except Image.DecompressionBombError as error:  # a frame larger than the header
        raise _Rejection(BOMB, str(error)) from error
    except _DECODE_ERRORS as error:
        raise _Rejection(DECODE_ERROR, f"{type(error).__name__}: {error}") from error


def sniff_non_image(data: bytes) -> str | None:
    """``SVG``, ``HTML``, ``XML`` or ``PDF`` when the bytes are that, else None.

    Servers often answer an image URL with an error page or a vector drawing;
    naming it tells those apart from broken image files.
    """
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%pdf"):
        return "PDF"
    if not head.startswith(b"<"):
        return None
    if b"<svg" in head:
        return "SVG"
    if b"<html" in head or b"<!doctype html" in head:
        return "HTML"
    return "XML"


def check_images(
    items: Iterable[tuple[Key, bytes]],
    config: ImageConfig | None = None,
    *,
    processes: int | None = None,
    batch_size: int = 256,
) -> Iterator[tuple[Key, ImageCheck]]:
    """Check many images, in a pool of ``processes`` workers (default: all cores).

    Yields ``(key, check)`` in input order. The input is read ``batch_size``
    images per worker at a time, so memory stays bounded however many images
    come. Ends with one log line of counts by status and reason.
    """
    config = config or ImageConfig()
    processes = processes or os.cpu_count() or 1
    counts: Counter[str] = Counter()
    for key, check in _check_batches(items, config, processes, batch_size):
        counts[check.reason or check.status] += 1
        yield key, check
    summary = " ".join(f"{name}={n}" for name, n in sorted(counts.items()))
    log.info("images checked: num_images=%d %s", counts.total(), summary)


def _check_batches(
    items: Iterable[tuple[Key, bytes]],
    config: ImageConfig,
    processes: int,
    batch_size: int,
) -> Iterator[tuple[Key, ImageCheck]]:
    work = partial(check_image, config=config)
    iterator = iter(items)
    if processes == 1:
        for key, data in iterator:
            yield key, work(data)
        return
    # Pool.imap would read the whole input ahead; batches bound what is held:
    # the one being checked and the one being handed out, so that the workers
    # never wait for the caller.
    chunksize = max(1, batch_size // 8)
    with multiprocessing.get_context().Pool(processes) as pool:
        handed: tuple[list[Key], AsyncResult[list[ImageCheck]]] | None = None
        while batch := list(itertools.islice(iterator, batch_size * processes)):
            keys = [key for key, _ in batch]
            datas = [data for _, data in batch]
            checking = (keys, pool.map_async(work, datas, chunksize=chunksize))
            if handed:
                yield from zip(handed[0], handed[1].get(), strict=True)
            handed = checking
        if handed:
            yield from zip(handed[0], handed[1].get(), strict=True)


# --------------------------------------------------------------------------
# Decoding


def decode_rgb(
    data: bytes,
    config: ImageConfig | None = None,
    *,
    target: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode image bytes to an RGB image, turned upright by its EXIF orientation.

    ``target`` is the smallest (width, height), upright, that the caller needs:
    a JPEG is then decoded at the smallest scale of 1/2, 1/4 or 1/8 that keeps
    both sides at least that large. Refuses bombs (``config.max_pixels``) but
    not formats or shapes: that is :func:`check_image`'s job. Raises
    :class:`ImageDecodeError` for bytes that cannot be decoded.
    """
    config = config or ImageConfig()
    with _raising_decode_errors(data):
        image = _open(data)
        _check_pixels(image.size, config)
        return to_rgb(_decode_opened(image, target))


def _decode_opened(
    image: ImageFile.ImageFile, target: tuple[int, int] | None
) -> Image.Image:
    """The pixels of an opened image, drafted to ``target``, upright.

    Grayscale stays grayscale, so that a resize works on one channel, not
    three; every other mode is converted to RGB.
    """
    orientation = exif_orientation(image)
    if target and image.format in _DRAFTABLE:
        width, height = target[::-1] if orientation >= 5 else target
        image.draft("RGB", (width, height))
    _load(image)
    upright = orient(image, orientation)
    return upright if _is_plain_gray(upright) else to_rgb(upright)


@contextmanager
def _raising_decode_errors(data: bytes) -> Iterator[None]:
    """Turn a rejection, or a mode that to_rgb cannot convert, into an error."""
    try:
        yield
    except _Rejection as rejection:
        raise _decode_error(data, rejection) from rejection
    except _DECODE_ERRORS as error:
        raise _decode_error(data, _Rejection(DECODE_ERROR, str(error))) from error


def _decode_error(data: bytes, rejection: _Rejection) -> ImageDecodeError:
    image_id = hashlib.sha256(data).hexdigest()
    return ImageDecodeError(
        f"image {image_id} ({len(data):,} bytes) cannot be decoded: "
        f"{rejection.reason} ({rejection}); check images with "
        "curate.images.check_image and export only those whose status is ok",
        rejection.reason,
    )


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent or unreadable."""
    # These formats keep EXIF only in info["exif"] once opened (PNG may also
    # have it in a chunk after the pixels: not worth decoding them to look);
    # skipping getexif() without it saves a good part of a small image's time.
    if image.format in _EXIF_IN_INFO and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1
    return value if value in _ORIENTATION_FIX else 1


def orient(image: Image.Image, orientation: int) -> Image.Image:
    """The image turned upright, given its EXIF orientation."""
    fix = _ORIENTATION_FIX.get(orientation)
    return image if fix is None else image.transpose(fix)


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any Pillow mode as RGB; alpha is composited onto white.

    16-bit and 32-bit integer modes are scaled from 0-65535 (``I`` only when
    its values pass 255, else taken as 8-bit); float ``F`` from 0-1 when its
    values stay within 1, else clipped to 0-255. CMYK goes through Pillow's
    plain conversion, without colour management.
    """
    if image.mode == "RGB":
        return image
    if _is_wide(image):
        return Image.fromarray(_to_eight_bits(np.asarray(image))).convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, _WHITE)
        flat.paste(rgba, mask=rgba)
        return flat
    return image.convert("RGB")


def _is_wide(image: Image.Image) -> bool:
    """Whether the mode holds more than 8 bits a pixel: 16-bit, 32-bit, float."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info
    )


def _to_eight_bits(array: np.ndarray) -> np.ndarray:
    """A 16-bit, 32-bit or float grayscale array scaled to uint8 (see to_rgb)."""
    if array.dtype.kind == "f":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    values = array.astype(np.int64)
    if array.dtype.itemsize > 2 and values.size and values.max() <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    # 257 maps 0-65535 onto 0-255 exactly: 8-bit v stored as 16-bit is v * 257.
    return ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)


# --------------------------------------------------------------------------
# Hashing


@lru_cache(maxsize=8)
def _dct_rows(size_px: int) -> np.ndarray:
    """The first 8 rows of the DCT-II matrix of ``size_px`` points, unscaled.

    Unscaled (2 cos(...), as scipy.fftpack.dct), so that the median threshold
    agrees bit for bit with the common pHash (the imagehash library).
    """
    k = np.arange(8)[:, None]
    n = np.arange(size_px)[None, :]
    return 2 * np.cos(np.pi * k * (2 * n + 1) / (2 * size_px))  # (8, size_px)


def perceptual_hash(image: Image.Image, *, size_px: int = 32) -> int:
    """The 64-bit pHash of an image, as an unsigned int.

    The image (any mode; alpha composited onto white) is reduced to a
    ``size_px`` square of luma with Lanczos; its 2-D DCT's 8x8 lowest
    frequencies, compared with their median, give the bits, row by row, the
    first the most significant.
    """
    small = _luma(image).resize((size_px, size_px), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)  # (size_px, size_px)
    rows = _dct_rows(size_px)  # (8, size_px)
    low = rows @ pixels @ rows.T  # (8, 8): vertical, then horizontal frequency
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _luma(image: Image.Image) -> Image.Image:
    """The image in mode L; straight from modes without alpha or wide values."""
    if _has_alpha(image) or _is_wide(image):
        return to_rgb(image).convert("L")
    return image if image.mode == "L" else image.convert("L")


def _is_plain_gray(image: Image.Image) -> bool:
    return image.mode == "L" and "transparency" not in image.info


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


# --------------------------------------------------------------------------
# Resizing and encoding


def _check_rule(rule: str, size_px: int, resample: str) -> None:
    if rule not in RESIZE_RULES:
        raise ConfigError(
            f"curate resize: rule={rule!r} is unknown; choose one of "
            f"{', '.join(RESIZE_RULES)}"
        )
    if resample not in RESAMPLE_FILTERS:
        raise ConfigError(
            f"curate resize: resample={resample!r} is unknown; choose one of "
            f"{', '.join(RESAMPLE_FILTERS)}"
        )
    if size_px < 1:
        raise ConfigError(f"curate resize: size_px={size_px}; give 1 or more")


def resize(
    image: Image.Image,
    rule: str = "shorter_side",
    size: int = 256,
    *,
    upscale: bool = False,
    resample: str = "hamming",
) -> Image.Image:
    """The image resized by a rule, keeping its aspect ratio.

    - ``shorter_side``: the shorter side becomes ``size``;
    - ``longer_side``: the longer side becomes ``size``;
    - ``center_crop``: the central square, ``size`` on each side;
    - ``none``: unchanged.

    Images already smaller are left as they are unless ``upscale`` (a
    ``center_crop`` is then the central square of the shorter side).
    ``resample`` names the filter (RESAMPLE_FILTERS). Raises ConfigError for
    an unknown rule or filter.
    """
    _check_rule(rule, size, resample)
    width, height = image.size
    if rule == "none":
        return image
    if rule == "center_crop":
        return _center_crop(image, size, upscale, RESAMPLE_FILTERS[resample])
    side = min(width, height) if rule == "shorter_side" else max(width, height)
    if side <= size and not (upscale and side < size):
        return image
    scale = size / side
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new, RESAMPLE_FILTERS[resample], reducing_gap=REDUCING_GAP)


def _center_crop(
    image: Image.Image, size: int, upscale: bool, resample: Image.Resampling
) -> Image.Image:
    """Crop the central square and resize it, in one resampling pass."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    if side <= size and not (upscale and side < size):
        return image.crop(box)
    return image.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Baseline JPEG bytes of an image, without EXIF, ICC profile or comment.

    The same pixels and quality give the same bytes (Pillow writes no time
    stamps). Colours are written as they are: an image in a wide-gamut colour
    space is not converted to sRGB, and loses its profile.
    """
    buffer = io.BytesIO()
    # comment=b"" stops Pillow from carrying the source's JPEG comment over.
    to_rgb(image).save(buffer, format="JPEG", quality=quality, comment=b"")
    return buffer.getvalue()


def export_jpeg(
    data: bytes,
    config: ImageConfig | None = None,
    resize_config: ResizeConfig | None = None,
) -> bytes:
    """Decode, resize and encode image bytes: the JPEG of a shard sample.

    With ``keep_jpeg``, a colour JPEG that needs neither resizing nor turning
    is copied instead, its metadata stripped (:func:`strip_jpeg_metadata`):
    its pixels are not decoded then, so check images with :func:`check_image`
    first. Raises :class:`ImageDecodeError` for bytes that cannot be decoded.
    """
    config = config or ImageConfig()
    rc = resize_config or ResizeConfig()
    with _raising_decode_errors(data):
        image = _open(data)
        _check_pixels(image.size, config)
        if rc.keep_jpeg and _unchanged_jpeg(image, rc):
            stripped = strip_jpeg_metadata(data)
            if stripped is not None:
                return stripped
        # Every rule needs both sides at least size_px wide before its final
        # resample (longer_side only its longer side; a square keeps it simple).
        target = None if rc.rule == "none" else (rc.size_px, rc.size_px)
        decoded = _decode_opened(image, target)
    resized = resize(
        decoded, rc.rule, rc.size_px, upscale=rc.upscale, resample=rc.resample
    )
    return encode_jpeg(resized, rc.quality)  # in RGB, grayscale included


def _unchanged_jpeg(image: ImageFile.ImageFile, rc: ResizeConfig) -> bool:
    """Whether the export would give the same pixels (before re-encoding)."""
    if image.format != "JPEG" or image.mode != "RGB" or exif_orientation(image) != 1:
        return False
    width, height = image.size
    if rc.rule == "none":
        return True
    if rc.rule == "center_crop" and width != height:
        return False
    side = max(width, height) if rc.rule == "longer_side" else min(width, height)
    return side == rc.size_px or (side < rc.size_px and not rc.upscale)


# JPEG markers (ITU T.81, table B.1) kept before the first scan: quantisation
# and Huffman tables, restart interval, Huffman-coded frames (baseline,
# extended, progressive), JFIF and Adobe segments (the latter says whether the
# three channels are YCbCr or RGB). Other APPn (EXIF, XMP, ICC, Photoshop,
# MPF) and comments are dropped; any other marker means a JPEG this copy does
# not handle (arithmetic or lossless coding), which is then re-encoded.
_KEEP_MARKERS = frozenset({0xDB, 0xC4, 0xDD, 0xC0, 0xC1, 0xC2, 0xE0, 0xEE})
_DROP_MARKERS = frozenset({*range(0xE1, 0xF0), 0xFE}) - {0xEE}
_SOS, _EOI = 0xDA, 0xD9


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG without metadata, coded data untouched; None if not handled.

    Keeps the tables, frame and scans up to the end-of-image marker; drops
    EXIF, XMP, ICC profiles, comments and anything after the image. The
    decoded pixels are the same.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    kept, pos = [b"\xff\xd8"], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans_end = _end_of_scans(data, pos)
            if scans_end is None:
                return None
            return b"".join([*kept, data[pos:scans_end]])
        if marker in _KEEP_MARKERS:
            kept.append(data[pos:end])
        elif marker not in _DROP_MARKERS:
            return None
        pos = end
    return None


def _end_of_scans(data: bytes, pos: int) -> int | None:
    """The offset just past the end-of-image marker, from the first scan on.

    Walks marker segments by their lengths and the entropy-coded data between
    them by its markers: there 0xFF is followed by 0x00 (a stuffed byte), a
    restart marker 0xD0-0xD7 or fill bytes 0xFF, anything else is a marker.
    """
    while pos + 4 <= len(data):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")  # segment
        while True:  # entropy-coded data, up to the next marker
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= len(data):
                return None
            following = data[pos + 1]
            if following == _EOI:
                return pos + 2
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                pos += 1 if following == 0xFF else 2
                continue
            break  # a marker segment: DHT, SOS, DRI, ... between scans
    return None
