"""Image checks, hashes and resizing on the shared real images.

Bad cases (truncated files, bombs, odd modes, EXIF rotation, near duplicates)
are made in the tests from those real photos.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import struct
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFile, ImageOps

from curate import images as ci
from curate.records import IMAGES_SCHEMA
from kg.errors import ConfigError
from tests.conftest import shared_file

# A small minimum side lets the 128 px flowers shrink and still be checked.
LENIENT = ci.ImageConfig(min_side_px=16)


# --------------------------------------------------------------------------
# Real images and helpers


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    folder = shared_file("images/samples")
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def flowers() -> list[Path]:
    """Every 20th flowers5 photo (about 216, all five kinds), 128x128 JPEGs."""
    return sorted(shared_file("images/flowers5").glob("*/*.jpg"))[::20]


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    """A 640x427 JPEG photo (the Summer Palace, from scikit-learn)."""
    return shared_file("images/samples/sklearn_china.jpg").read_bytes()


@pytest.fixture(scope="module")
def photo(photo_bytes: bytes) -> Image.Image:
    """The same photo reduced to 200x133, RGB, for the mode tests."""
    return Image.open(io.BytesIO(photo_bytes)).convert("RGB").resize((200, 133))


def encode(image: Image.Image, image_format: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(pixels(a) - pixels(b)).mean())


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((pixels(a).astype(np.float64) - pixels(b)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


# --------------------------------------------------------------------------
# Real images are accepted as they are


def test_real_images_are_accepted_with_header_facts(samples: list[Path]) -> None:
    flowers = sorted(shared_file("images/flowers5").glob("*/*.jpg"))[::100]
    for path in samples + flowers:
        data = path.read_bytes()
        check = ci.check_image(data)
        header = Image.open(path)
        assert check.status == ci.OK, (path.name, check.reason)
        assert check.reason is None
        assert check.image_id == hashlib.sha256(data).hexdigest()
        assert (check.format, check.mode) == (header.format, header.mode)
        assert (check.width, check.height) == header.size
        assert check.phash is not None and 0 <= check.phash < 2**64


def test_checks_fit_the_images_schema(samples: list[Path]) -> None:
    checks = [ci.check_image(p.read_bytes()) for p in samples[:4]]
    checks.append(ci.check_image(b"<html>not found</html>"))
    names = list(asdict(checks[0]))
    schema = pa.schema([IMAGES_SCHEMA.field(name) for name in names])
    table = pa.Table.from_pylist([asdict(c) for c in checks], schema=schema)
    assert table.column("phash").to_pylist()[:4] == [c.phash for c in checks[:4]]
    assert table.column("reason").to_pylist()[-1] == ci.NOT_A_PHOTO_FORMAT


def test_formats_beyond_jpeg_and_png(photo: Image.Image) -> None:
    for image_format in ("WEBP", "BMP", "TIFF", "AVIF"):
        check = ci.check_image(encode(photo, image_format))
        assert (check.status, check.format) == (ci.OK, image_format)


# --------------------------------------------------------------------------
# Rejections


def test_placeholder_gif_is_not_a_photo_format_unless_allowed() -> None:
    data = shared_file("images/broken/imageNotFound.gif").read_bytes()
    check = ci.check_image(data)
    assert (check.status, check.reason) == (ci.REJECTED, ci.NOT_A_PHOTO_FORMAT)
    assert (check.format, check.width, check.height) == ("GIF", 300, 300)
    assert check.phash is None

    allowed = ci.check_image(data, ci.ImageConfig(formats=(*ci.PHOTO_FORMATS, "gif")))
    assert allowed.status == ci.OK and allowed.phash is not None


@pytest.mark.parametrize(
    ("data", "image_format"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\xef\xbb\xbf <!DOCTYPE html><html><body>404</body></html>", "HTML"),
        (b"<error>rate limited</error>", "XML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    ],
)
def test_markup_and_documents_are_not_photos(data: bytes, image_format: str) -> None:
    check = ci.check_image(data)
    assert (check.reason, check.format) == (ci.NOT_A_PHOTO_FORMAT, image_format)


def test_icon_is_not_a_photo_format(photo: Image.Image) -> None:
    check = ci.check_image(encode(photo, "ICO", sizes=[(128, 128)]))
    assert (check.format, check.reason) == ("ICO", ci.NOT_A_PHOTO_FORMAT)


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, b"file,label\nx,y\n"])
def test_unknown_bytes_are_decode_errors(data: bytes) -> None:
    check = ci.check_image(data)
    assert (check.status, check.reason, check.format) == (
        ci.REJECTED,
        ci.DECODE_ERROR,
        None,
    )


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.995])
def test_truncated_jpeg_is_a_decode_error(photo_bytes: bytes, keep: float) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = photo_bytes[: int(len(photo_bytes) * keep)]
    check = ci.check_image(data)
    assert (check.format, check.reason) == ("JPEG", ci.DECODE_ERROR)
    # The reduced-scale decode of the export reads every byte too.
    with pytest.raises(ci.ImageDecodeError) as raised:
        ci.export_jpeg(data)
    assert raised.value.reason == ci.DECODE_ERROR
    assert hashlib.sha256(data).hexdigest() in str(raised.value)


def test_truncated_png_is_a_decode_error() -> None:
    data = shared_file("images/samples/skimage_coffee.png").read_bytes()
    check = ci.check_image(data[: len(data) * 3 // 4])
    assert (check.format, check.reason) == ("PNG", ci.DECODE_ERROR)


def png_declaring(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose header claims another size (its CRC fixed)."""
    assert data[12:16] == b"IHDR"
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return (
        data[:8] + data[8:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]
    )


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_header_claiming_too_many_pixels_is_a_bomb(side: int) -> None:
    # 10,000^2 is past the default limit but below Pillow's own refusal (twice
    # it): this module's check catches it; 100,000^2 Pillow refuses itself.
    real = shared_file("images/samples/skimage_coins.png").read_bytes()
    check = ci.check_image(png_declaring(real, side, side))
    assert check.reason == ci.BOMB
    if side == 10_000:  # Pillow's refusal comes before the size is known
        assert (check.format, check.width, check.height) == ("PNG", side, side)
    with pytest.raises(ci.ImageDecodeError) as raised:
        ci.decode_rgb(png_declaring(real, side, side))
    assert raised.value.reason == ci.BOMB


def test_small_file_of_many_pixels_is_a_bomb() -> None:
    data = encode(Image.new("1", (10_000, 9_000), 1), optimize=True)
    assert len(data) < 100_000  # 90 million pixels in a small file
    assert ci.check_image(data).reason == ci.BOMB
    assert ci.check_image(data, ci.ImageConfig(max_pixels=10**8)).reason is None


def test_pixel_limit_is_the_configs(photo_bytes: bytes) -> None:
    assert ci.check_image(photo_bytes, ci.ImageConfig(max_pixels=640 * 427)).ok
    small = ci.ImageConfig(max_pixels=640 * 427 - 1)
    assert ci.check_image(photo_bytes, small).reason == ci.BOMB


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((64, 64), None),
        ((63, 120), ci.TOO_SMALL),
        ((120, 40), ci.TOO_SMALL),
        ((192, 64), None),  # exactly 3:1
        ((64, 193), ci.TOO_ELONGATED),
        ((400, 133), ci.TOO_ELONGATED),
    ],
)
def test_shape_limits(
    photo: Image.Image, size: tuple[int, int], reason: str | None
) -> None:
    check = ci.check_image(encode(photo.resize(size), "JPEG"))
    assert check.reason == reason
    assert (check.width, check.height) == size


def test_shape_limits_are_configurable(photo: Image.Image) -> None:
    data = encode(photo.resize((40, 200)), "JPEG")
    assert ci.check_image(data).reason == ci.TOO_SMALL
    config = ci.ImageConfig(min_side_px=32, max_aspect=5.0)
    assert ci.check_image(data, config).ok


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_aspect"):
        ci.ImageConfig(max_aspect=0.5)
    with pytest.raises(ConfigError, match="min_side_px"):
        ci.ImageConfig(min_side_px=0)
    with pytest.raises(ConfigError, match="rule='square'"):
        ci.ResizeConfig(rule="square")
    with pytest.raises(ConfigError, match="resample='nearest'"):
        ci.ResizeConfig(resample="nearest")
    assert ci.ImageConfig(formats=["jpeg", "png"]).formats == ("JPEG", "PNG")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Modes to RGB


def with_transparent_left(image: Image.Image) -> Image.Image:
    """An RGBA/LA copy: left third transparent, middle half-opaque, right opaque."""
    alpha = np.full((image.height, image.width), 255, dtype=np.uint8)
    third = image.width // 3
    alpha[:, :third], alpha[:, third : 2 * third] = 0, 128
    out = image.convert("LA" if image.mode == "L" else "RGBA")
    out.putalpha(Image.fromarray(alpha))
    return out


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_alpha_is_composited_onto_white(photo: Image.Image, mode: str) -> None:
    source = photo.convert(mode)
    rgb = ci.decode_rgb(encode(with_transparent_left(source)))
    expected = pixels(source.convert("RGB"))
    out, third = pixels(rgb), photo.width // 3
    assert (out[:, :third] == 255).all()
    half = (expected[:, third : 2 * third] * 128.0 + 255 * 127) / 255
    assert np.abs(out[:, third : 2 * third] - half).max() <= 1
    assert (out[:, 2 * third :] == expected[:, 2 * third :]).all()


def test_real_rgba_image_is_composited() -> None:
    data = shared_file("images/samples/skimage_horse.png").read_bytes()
    source = Image.open(io.BytesIO(data))
    alpha = np.asarray(source.getchannel("A"), dtype=np.float64)[..., None]
    out = pixels(ci.decode_rgb(data))
    assert ci.check_image(data).mode == "RGBA"
    assert (alpha < 255).any()  # its corners are rounded by alpha
    blend = (pixels(source.convert("RGB")) * alpha + 255 * (255 - alpha)) / 255
    assert np.abs(out - blend).max() <= 1


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_palette_with_transparency(photo: Image.Image, image_format: str) -> None:
    palette = photo.quantize(colors=255)
    indices = np.array(palette, dtype=np.uint8)
    indices[:, :50] = 255  # the transparent entry
    colours = palette.getpalette() or []
    image = Image.fromarray(indices)  # mode L, until the palette makes it P
    image.putpalette([*colours[: 255 * 3], 0, 0, 0])
    data = encode(image, image_format, transparency=255)
    config = ci.ImageConfig(formats=("PNG", "GIF"))
    assert ci.check_image(data, config).mode == "P"

    out = pixels(ci.decode_rgb(data, config))
    assert (out[:, :50] == 255).all()
    assert (out[:, 50:] == pixels(palette.convert("RGB"))[:, 50:]).all()


def test_cmyk_jpeg(photo: Image.Image) -> None:
    data = encode(photo.convert("CMYK"), "JPEG", quality=95)
    check = ci.check_image(data)
    assert (check.status, check.mode) == (ci.OK, "CMYK")
    assert mean_abs_diff(ci.decode_rgb(data), photo) < 3
    assert ci.hamming(check.phash or 0, ci.perceptual_hash(photo)) <= 4


def test_sixteen_bit_png(photo: Image.Image) -> None:
    gray = np.asarray(photo.convert("L"))
    data = encode(Image.fromarray(gray.astype(np.uint16) * 257))
    assert ci.check_image(data).mode == "I;16"
    out = pixels(ci.decode_rgb(data))
    assert (out == gray[..., None]).all()


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ("int32 wide", 257),  # I holding 16-bit values
        ("int32 narrow", 1),  # I holding 8-bit values
        ("float unit", 1 / 255),  # F in 0-1
        ("float bytes", 1),  # F in 0-255
    ],
)
def test_integer_and_float_modes(photo: Image.Image, values: str, scale: float) -> None:
    gray = np.asarray(photo.convert("L"))
    dtype = np.int32 if values.startswith("int") else np.float32
    image = Image.fromarray((gray.astype(np.float64) * scale).astype(dtype))
    assert image.mode == ("I" if dtype is np.int32 else "F")
    data = encode(image, "TIFF")
    assert ci.check_image(data).mode == image.mode
    assert (pixels(ci.decode_rgb(data)) == gray[..., None]).all()


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "RGBX"])
def test_plain_modes_match_pillows_conversion(photo: Image.Image, mode: str) -> None:
    image = photo.convert(mode)
    assert (pixels(ci.to_rgb(image)) == pixels(image.convert("RGB"))).all()
    if mode == "1":
        assert set(np.unique(pixels(ci.to_rgb(image)))) == {0, 255}


# --------------------------------------------------------------------------
# EXIF orientation


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def test_orientation_six_turns_the_photo_upright(photo: Image.Image) -> None:
    data = with_orientation(photo, 6)  # stored sideways: turn 90° clockwise
    check = ci.check_image(data)
    assert (check.width, check.height) == (133, 200)

    upright = ci.decode_rgb(data)
    assert upright.size == (133, 200)
    assert mean_abs_diff(upright, photo.transpose(Image.Transpose.ROTATE_270)) < 3
    reference = ci.perceptual_hash(photo.transpose(Image.Transpose.ROTATE_270))
    assert ci.hamming(check.phash or 0, reference) <= 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(
    photo: Image.Image, orientation: int
) -> None:
    data = with_orientation(photo, orientation)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert (pixels(ci.decode_rgb(data)) == pixels(reference)).all()
    drafted = ci.decode_rgb(data, target=(60, 90) if orientation >= 5 else (90, 60))
    assert drafted.size == (reference.width // 2, reference.height // 2) or (
        drafted.size == (-(-reference.width // 2), -(-reference.height // 2))
    )


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_unreadable_orientation_is_ignored(photo: Image.Image) -> None:
    data = with_orientation(photo, 6)
    # The offset of the first IFD, just after "Exif\0\0" and the byte order
    # mark, now points far past the end.
    start = data.index(b"Exif\x00\x00") + 10
    broken = data[:start] + b"\x7f\xff\xff\xff" + data[start + 4 :]
    check = ci.check_image(broken)
    assert check.ok and (check.width, check.height) in ((200, 133), (133, 200))


# --------------------------------------------------------------------------
# Perceptual hash


def test_hash_agrees_with_imagehash(samples: list[Path], flowers: list[Path]) -> None:
    imagehash = pytest.importorskip("imagehash")
    for path in samples + flowers[:60]:
        image: Image.Image = Image.open(path)
        if "A" in image.mode:
            image = ci.to_rgb(image)  # imagehash drops alpha; this composites it
        expected = int(str(imagehash.phash(image)), 16)
        assert ci.perceptual_hash(image) == expected, path.name


def test_near_duplicates_are_close_and_distinct_images_far(
    flowers: list[Path],
) -> None:
    near, hashes = [], []
    for path in flowers:
        data = path.read_bytes()
        original = ci.check_image(data, LENIENT).phash or 0
        hashes.append(original)
        if len(hashes) % 3:
            continue  # variants of every third flower are enough
        image = ci.decode_rgb(data)
        for size in (96, 128, 200):
            for quality in (50, 80):
                variant = encode(image.resize((size, size)), "JPEG", quality=quality)
                near.append(ci.hamming(original, ci.check_image(variant).phash or 0))
    far = [ci.hamming(a, b) for a, b in itertools.combinations(hashes, 2)]

    assert len(near) >= 400 and len(far) >= 20_000
    assert max(near) <= 6 and np.percentile(near, 95) <= 2
    assert np.median(far) >= 28 and np.percentile(far, 1) >= 18 and min(far) > 8


def test_hash_of_check_is_close_to_hash_of_full_decode(samples: list[Path]) -> None:
    for path in samples:
        data = path.read_bytes()
        full = ci.perceptual_hash(ci.decode_rgb(data))
        assert ci.hamming(ci.check_image(data).phash or 0, full) <= 6, path.name


def test_hamming() -> None:
    assert ci.hamming(0, 2**64 - 1) == 64
    assert ci.hamming(0b1011, 0b0001) == 2


# --------------------------------------------------------------------------
# Resizing and encoding


@pytest.mark.parametrize(
    ("rule", "size"),
    [
        ("shorter_side", (384, 256)),
        ("longer_side", (256, 171)),
        ("center_crop", (256, 256)),
        ("none", (640, 427)),
    ],
)
def test_resize_rules(photo_bytes: bytes, rule: str, size: tuple[int, int]) -> None:
    image = ci.decode_rgb(photo_bytes)
    assert ci.resize(image, rule, 256).size == size


@pytest.mark.parametrize("resample", sorted(ci.RESAMPLE_FILTERS))
def test_every_filter_is_close_to_lanczos(photo_bytes: bytes, resample: str) -> None:
    image = ci.decode_rgb(photo_bytes)  # 640 x 427: a shrink by 1.67
    resized = ci.resize(image, "shorter_side", 256, resample=resample)
    reference = image.resize(resized.size, Image.Resampling.LANCZOS)
    # box is the softest between whole factors (documented in RESAMPLE_FILTERS)
    assert psnr(resized, reference) > (30 if resample == "box" else 33)
    if resample in ("bicubic", "lanczos"):
        assert psnr(resized, reference) > 40


def test_large_png_is_reduced_then_resampled(photo_bytes: bytes) -> None:
    # No decoder scaling for PNG: a box reduction by a whole factor stands in.
    image = ci.decode_rgb(photo_bytes).resize((1920, 1281), Image.Resampling.LANCZOS)
    resized = ci.resize(image, "shorter_side", 256)
    assert psnr(resized, image.resize((384, 256), Image.Resampling.LANCZOS)) > 36
    sharp = ci.resize(image, "shorter_side", 256, resample="bicubic")
    assert psnr(sharp, image.resize((384, 256), Image.Resampling.LANCZOS)) > 38
    exported = ci.export_jpeg(encode(image, compress_level=1))
    assert Image.open(io.BytesIO(exported)).size == (384, 256)
    assert exported == ci.encode_jpeg(resized)


def test_center_crop_is_the_middle_square(photo_bytes: bytes) -> None:
    image = ci.decode_rgb(photo_bytes)
    left = (640 - 427) // 2
    reference = image.crop((left, 0, left + 427, 427)).resize(
        (256, 256), Image.Resampling.LANCZOS
    )
    cropped = ci.resize(image, "center_crop", 256, resample="lanczos")
    assert psnr(cropped, reference) > 40


def test_small_images_are_not_upscaled_unless_asked(flowers: list[Path]) -> None:
    image = ci.decode_rgb(flowers[0].read_bytes())
    assert image.size == (128, 128)
    for rule in ("shorter_side", "longer_side", "center_crop"):
        assert ci.resize(image, rule, 256).size == (128, 128)
        assert ci.resize(image, rule, 256, upscale=True).size == (256, 256)
    wide = image.crop((0, 0, 128, 100))
    assert ci.resize(wide, "center_crop", 256).size == (100, 100)
    with pytest.raises(ConfigError, match="choose one of"):
        ci.resize(image, "stretch", 256)


def test_export_is_deterministic_and_carries_no_metadata(samples: list[Path]) -> None:
    for path in samples:
        data = path.read_bytes()
        first = ci.export_jpeg(data)
        assert first == ci.export_jpeg(data), path.name
        exported = Image.open(io.BytesIO(first))
        assert (exported.format, exported.mode) == ("JPEG", "RGB")
        assert min(exported.size) == min(256, *Image.open(path).size)
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(exported.info)
    # the source carries all of these; the export none
    source = Image.open(shared_file("images/samples/skimage_hubble_deep_field.jpg"))
    assert {"exif", "icc_profile", "xmp"} <= set(source.info)
    assert "comment" in Image.open(samples[0]).info  # grace_hopper's JPEG comment


def test_export_quality_and_rule(photo_bytes: bytes) -> None:
    low = ci.export_jpeg(photo_bytes, resize_config=ci.ResizeConfig(quality=40))
    high = ci.export_jpeg(photo_bytes)
    assert len(low) < len(high) / 2
    crop = ci.ResizeConfig(rule="center_crop", size_px=224)
    assert Image.open(io.BytesIO(ci.export_jpeg(photo_bytes, None, crop))).size == (
        224,
        224,
    )


def test_small_jpegs_are_copied_without_metadata(flowers: list[Path]) -> None:
    for path in flowers[:30]:
        data = path.read_bytes()
        exported = ci.export_jpeg(data)
        assert exported == ci.strip_jpeg_metadata(data)
        assert len(exported) <= len(data)
        assert (
            pixels(Image.open(io.BytesIO(exported))) == pixels(Image.open(path))
        ).all()


@pytest.mark.parametrize("progressive", [False, True])
def test_copy_drops_exif_icc_comment_and_trailing_bytes(
    photo: Image.Image, progressive: bool
) -> None:
    sample = Image.open(shared_file("images/samples/sklearn_china.jpg"))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 1, "a camera maker"  # orientation, make
    data = encode(
        photo,
        "JPEG",
        quality=90,
        exif=exif.tobytes(),
        icc_profile=sample.info["icc_profile"],
        comment=b"shot by someone",
        progressive=progressive,
    )
    data += b"SEFH private trailer \xff\xd9 more"
    exported = ci.export_jpeg(data)
    out = Image.open(io.BytesIO(exported))
    assert exported.endswith(b"\xff\xd9") and b"trailer" not in exported
    assert not {"exif", "icc_profile", "comment"} & set(out.info)
    assert {"exif", "icc_profile", "comment"} <= set(Image.open(io.BytesIO(data)).info)
    assert (pixels(out) == pixels(Image.open(io.BytesIO(data)))).all()


def test_jpegs_that_change_are_reencoded(photo: Image.Image) -> None:
    turned = ci.export_jpeg(with_orientation(photo, 6))
    assert Image.open(io.BytesIO(turned)).size == (133, 200)
    gray = ci.export_jpeg(encode(photo.convert("L"), "JPEG"))
    assert Image.open(io.BytesIO(gray)).mode == "RGB"
    data = encode(photo, "JPEG")
    copied = ci.export_jpeg(data)
    reencoded = ci.export_jpeg(data, resize_config=ci.ResizeConfig(keep_jpeg=False))
    assert copied != reencoded
    assert reencoded == ci.encode_jpeg(Image.open(io.BytesIO(data)))
    upscaled = ci.ResizeConfig(upscale=True)
    assert Image.open(io.BytesIO(ci.export_jpeg(data, None, upscaled))).size == (
        385,
        256,
    )


def test_small_truncated_jpeg_is_not_copied(photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    assert ci.strip_jpeg_metadata(data[: len(data) // 2]) is None
    with pytest.raises(ci.ImageDecodeError):
        ci.export_jpeg(data[: len(data) // 2])
    assert ci.strip_jpeg_metadata(encode(photo)) is None  # a PNG


def test_reduced_scale_decode_is_close_to_full_decode(samples: list[Path]) -> None:
    """The drafted export path against a full decode and a Lanczos resize."""
    jpegs = [p for p in samples if p.suffix == ".jpg"]
    scores = []
    for path in jpegs:
        data = path.read_bytes()
        drafted = ci.decode_rgb(data, target=(128, 128))
        full = ci.decode_rgb(data)
        assert min(drafted.size) >= 128
        assert drafted.width < full.width or min(full.size) < 256  # really drafted
        fast = ci.resize(drafted, "shorter_side", 128)
        slow = full.resize(fast.size, Image.Resampling.LANCZOS)
        scores.append(psnr(fast, slow))
        assert scores[-1] > 30, path.name
    assert np.mean(scores) > 35


# --------------------------------------------------------------------------
# Many images


def test_check_images_keeps_input_order(
    flowers: list[Path], samples: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    items = [(p.name, p.read_bytes()) for p in flowers[:20] + samples[:6]]
    items.insert(5, ("truncated", items[0][1][:2000]))
    items.insert(9, ("html", b"<html></html>"))
    expected = [(key, ci.check_image(data)) for key, data in items]

    with caplog.at_level(logging.INFO, logger="curate.images"):
        pooled = list(ci.check_images(iter(items), processes=2, batch_size=3))
    assert pooled == expected
    assert list(ci.check_images(items, processes=1)) == expected
    assert "num_images=28 decode_error=1 not_a_photo_format=1 ok=26" in caplog.text
