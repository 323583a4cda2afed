"""Tests for cxr_core.imaging: every supported format, every typed rejection.

All inputs are built in memory by the tests (Pillow / pydicom); one test reads real
files from ../shared/data/cxr-mini and skips when it is absent.
"""

from __future__ import annotations

import builtins
import csv
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.config import DecodeLimits
from cxr_core.imaging import (
    ERROR_CODES,
    SUPPORTED_EXTENSIONS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    read_gray,
)
from tests.conftest import missing_dependency
from tests.upload_corpus import PHI_ID, PHI_NAME, dicom

# ----------------------------------------------------------------------------- builders


def ramp(h: int = 48, w: int = 64, hi: int = 255, dtype=np.uint8) -> np.ndarray:
    """A horizontal ramp from 0 to ``hi`` with a distinct value per column."""
    row = np.linspace(0, hi, w).round().astype(dtype)
    return np.ascontiguousarray(np.broadcast_to(row, (h, w)))


def pil_bytes(im: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG that declares a huge size but carries almost no data (bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def make_dicom(pixels: np.ndarray, *, with_pixels: bool = True, **kw) -> bytes:
    """A DX DICOM file built with pydicom, carrying fake patient identifiers (``upload_corpus.dicom``)."""
    return dicom(pixels if with_pixels else None, shape=pixels.shape[:2], **kw)


def encapsulated_dicom(codestream: bytes, shape: tuple[int, int], bits: int, transfer_syntax: str) -> bytes:
    """Wrap a JPEG / JPEG 2000 codestream made by Pillow into a DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto 0..255 (the reference the decoder must match)."""
    c, w = center - 0.5, width - 1
    y = ((x.astype(float) - c) / w + 0.5) * 255
    y[x <= c - w / 2] = 0
    y[x > c + w / 2] = 255
    return np.rint(y).astype(np.uint8)


DEFAULT_LIMITS = DecodeLimits()


def assert_valid(result: DecodedImage, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    assert isinstance(result, DecodedImage)
    arr = result.array
    assert arr.ndim == 2 and arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert min(arr.shape) >= limits.min_side
    assert all(isinstance(n, str) and n for n in result.notices)


def expect_error(data, code: str, **kw) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    err = info.value
    assert err.code == code, (err.code, err.message, err.detail)
    assert isinstance(err.message, str) and len(err.message) > 10
    assert str(err) == err.message
    return err


def no_phi(*texts: object) -> None:
    for t in texts:
        s = str(t)
        for secret in (PHI_NAME, PHI_ID, "Doe", "Jane", "9876543"):
            assert secret not in s


# ----------------------------------------------------------------------------- raster formats


def test_png_8bit_gray_is_exact():
    a = ramp()
    r = decode_image(pil_bytes(a, "PNG"))
    assert_valid(r)
    assert r.format == "PNG" and r.bit_depth == 8 and r.original_shape == (48, 64)
    np.testing.assert_array_equal(r.array, a)
    assert r.notices == ()


def test_png_16bit_uses_a_window_not_truncation():
    # 12-bit data stored in 16 bits: dropping the low byte would give values 0..15.
    a = ramp(hi=4095, dtype=np.uint16)
    r = decode_image(pil_bytes(a, "PNG"))
    assert_valid(r)
    assert r.bit_depth == 16
    assert r.array.min() == 0 and r.array.max() == 255
    assert np.all(np.diff(r.array[0].astype(int)) >= 0), "windowing must keep the ramp monotone"
    assert any("percentile" in n for n in r.notices)


def png16_colour(values: np.ndarray, colour: int, extra_chunks: bytes = b"") -> bytes:
    """A 16-bit PNG of colour type 2 (RGB), 4 (grey+alpha) or 6 (RGBA), written by hand."""
    h, w = values.shape[:2]
    be = values.astype(">u2")
    raw = b"".join(b"\x00" + be[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra_chunks
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def test_png_16bit_colour_and_alpha_keep_all_16_bits():
    # Pillow alone would keep the high byte: 12-bit data would come out as 0..15.
    g = ramp(hi=4095, dtype=np.uint16)
    opaque = np.full_like(g, 65535)
    for colour, planes in ((2, [g, g, g]), (4, [g, opaque]), (6, [g, g, g, opaque])):
        r = decode_image(png16_colour(np.dstack(planes), colour))
        assert_valid(r)
        assert r.bit_depth == 16
        assert r.array[0, 0] == 0 and r.array[0, -1] == 255, colour
        assert np.all(np.diff(r.array[0].astype(int)) >= 0)
    half = opaque.copy()
    half[:, 32:] = 0  # right half transparent → black
    r = decode_image(png16_colour(np.dstack([g, g, g, half]), 6))
    assert (r.array[:, 32:] == 0).all() and r.array[:, :32].max() > 200
    assert any("black" in n for n in r.notices)


def test_png_16bit_colour_honours_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise
    g = ramp(hi=4095, dtype=np.uint16)
    tiff_exif = exif.tobytes().removeprefix(b"Exif\x00\x00")  # PNG eXIf holds bare TIFF data
    r = decode_image(png16_colour(np.dstack([g, g, g]), 2, png_chunk(b"eXIf", tiff_exif)))
    assert r.array.shape == (64, 48)
    assert r.array[0].min() == r.array[0].max() == 255, "the bright right edge is now the top row"
    assert any("EXIF orientation" in n for n in r.notices)


def test_png_16bit_constant_image_is_black_with_notice():
    r = decode_image(pil_bytes(np.full((40, 40), 1234, np.uint16), "PNG"))
    assert (r.array == 0).all() and any("flat" in n for n in r.notices)


def test_rgba_png_composited_over_black():
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :25, 3] = 255  # left half opaque grey 200
    rgba[:, 25:, 3] = 0  # right half fully transparent
    r = decode_image(pil_bytes(rgba, "PNG"))
    assert_valid(r)
    assert (r.array[:, :25] == 200).all()
    assert (r.array[:, 25:] == 0).all()
    assert any("black" in n for n in r.notices)


def test_rgb_png_to_luma_with_notice():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 255  # pure red → ITU-R 601 luma 76
    r = decode_image(pil_bytes(rgb, "PNG"))
    assert (r.array == 76).all()
    assert any("Colour" in n for n in r.notices)


def test_grey_rgb_png_has_no_colour_notice():
    rgb = np.repeat(ramp()[..., None], 3, axis=2)
    r = decode_image(pil_bytes(rgb, "PNG"))
    np.testing.assert_array_equal(r.array, ramp())
    assert r.notices == ()


def test_palette_png_and_palette_with_transparency():
    im = Image.fromarray(ramp()).convert("P")
    r = decode_image(pil_bytes(im, "PNG"))
    assert_valid(r)
    np.testing.assert_array_equal(r.array, ramp())
    # One mid-grey palette entry transparent: those pixels composite over black (0), the rest keep
    # their grey, and the page is told. (Index 0 would be black already and prove nothing.)
    indices = np.asarray(im)
    t = int(indices[0, 32])
    assert ramp()[0, 32] > 100
    r = decode_image(pil_bytes(im, "PNG", transparency=t))
    assert_valid(r)
    want = np.where(indices == t, 0, ramp()).astype(np.uint8)
    assert (indices == t).sum() >= ramp().shape[0], "the transparent index must cover a column at least"
    np.testing.assert_array_equal(r.array, want)
    assert "Transparent areas were composited over black." in " ".join(r.notices)


def test_la_and_1bit_png():
    la = Image.merge("LA", [Image.fromarray(ramp()), Image.new("L", (64, 48), 255)])
    np.testing.assert_array_equal(decode_image(pil_bytes(la, "PNG")).array, ramp())
    bw = Image.fromarray(ramp() > 127)
    r = decode_image(pil_bytes(bw, "PNG"))
    assert set(np.unique(r.array)) == {0, 255} and r.bit_depth == 1


def test_jpeg_gray_and_cmyk():
    r = decode_image(pil_bytes(ramp(), "JPEG", quality=95))
    assert_valid(r)
    assert r.format == "JPEG" and r.bit_depth == 8
    assert np.abs(r.array.astype(int) - ramp()).max() <= 6
    # A grey ramp stored as CMYK (Adobe JPEG): the same ramp comes back, not its negative or one ink.
    cmyk = Image.fromarray(np.dstack([ramp()] * 3)).convert("CMYK")
    r = decode_image(pil_bytes(cmyk, "JPEG", quality=95))
    assert_valid(r)
    assert r.format == "JPEG" and r.array.shape == ramp().shape
    assert np.abs(r.array.astype(int) - ramp()).max() <= 6


def test_exif_rotated_jpeg_comes_out_rotated():
    a = np.zeros((40, 64), np.uint8)  # landscape: 64 wide, 40 high
    a[:, :8] = 255  # a bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    r = decode_image(pil_bytes(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95))
    assert r.array.shape == (64, 40), "portrait after orientation"
    assert r.original_shape == (64, 40), "reported in display orientation"
    assert r.array[:8].mean() > 200 and r.array[-8:].mean() < 30, "left band rotated to the top"
    assert any("EXIF orientation" in n for n in r.notices)


def test_bmp_gray_and_rgb():
    r = decode_image(pil_bytes(ramp(), "BMP"))
    assert r.format == "BMP"
    np.testing.assert_array_equal(r.array, ramp())
    r = decode_image(pil_bytes(np.dstack([ramp()] * 3), "BMP"))
    np.testing.assert_array_equal(r.array, ramp())


def test_tiff_8bit_16bit_float_and_multipage():
    np.testing.assert_array_equal(decode_image(pil_bytes(ramp(), "TIFF")).array, ramp())
    r16 = decode_image(pil_bytes(ramp(hi=60000, dtype=np.uint16), "TIFF"))
    assert r16.format == "TIFF" and r16.bit_depth == 16 and r16.array.max() == 255
    f = Image.fromarray(ramp().astype(np.float32) / 255.0 - 0.5, mode="F")
    rf = decode_image(pil_bytes(f, "TIFF"))
    assert_valid(rf)
    assert rf.array[0, 0] == 0 and rf.array[0, -1] == 255
    pages = [Image.fromarray(np.full((40, 40), v, np.uint8)) for v in (30, 90, 150)]
    rm = decode_image(pil_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert (rm.array == 30).all()
    assert "Multi-page TIFF: showing the first page." in rm.notices


def test_tiff_pillow_cannot_read_falls_back_to_tifffile():
    try:
        import tifffile
    except ImportError as exc:
        missing_dependency(f"tifffile is not installed: {exc}")
    buf = io.BytesIO()
    # Half-float samples: Pillow has no mode for them, tifffile reads them.
    # (12-bit packed TIFFs need imagecodecs to write, which is not installed.)
    tifffile.imwrite(buf, ramp(hi=4095, dtype=np.uint16).astype(np.float16))
    with pytest.raises(OSError):  # UnidentifiedImageError
        Image.open(io.BytesIO(buf.getvalue())).load()
    r = decode_image(buf.getvalue())
    assert_valid(r)
    assert r.format == "TIFF" and r.bit_depth == 16
    assert r.array[0, 0] == 0 and r.array[0, -1] == 255


def test_animated_gif_first_frame_with_notice():
    frames = [Image.fromarray(np.full((40, 48), v, np.uint8)) for v in (20, 120, 220)]
    data = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r = decode_image(data)
    assert_valid(r)
    assert r.format == "GIF"
    assert abs(float(r.array.mean()) - 20) < 2
    assert "Animated GIF: showing the first frame." in r.notices


def test_animated_png_and_webp_first_frame_with_count():
    frames = [Image.fromarray(np.full((40, 48), v, np.uint8)) for v in (20, 120, 220, 60)]
    for fmt, extra in (("PNG", {}), ("WEBP", {"lossless": True})):
        r = decode_image(
            pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
        )
        assert abs(float(r.array.mean()) - 20) < 2
        assert f"Animated {fmt}: showing frame 1 of 4." in r.notices


def test_webp():
    r = decode_image(pil_bytes(ramp(), "WEBP", lossless=True))
    assert r.format == "WEBP"
    np.testing.assert_array_equal(r.array, ramp())


# ----------------------------------------------------------------------------- DICOM


def test_dicom_16bit_monochrome2_with_voi_window():
    a = ramp(h=40, w=64, hi=4095, dtype=np.uint16)
    r = decode_image(make_dicom(a, bits_stored=12, window=(1000, 400)))
    assert_valid(r)
    assert r.format == "DICOM" and r.bit_depth == 12 and r.original_shape == (40, 64)
    np.testing.assert_array_equal(r.array, dicom_linear_window(a, 1000, 400))
    assert (r.array[a <= 800] == 0).all() and (r.array[a >= 1200] == 255).all()
    assert any("window" in n for n in r.notices)
    no_phi(r, r.notices)


def test_dicom_modality_lut_then_window():
    a = ramp(h=40, w=64, hi=1000, dtype=np.uint16)
    # Stored v → 2v − 1000 (HU-like); window centred on 0 means stored 500 is mid-grey.
    r = decode_image(make_dicom(a, window=(0, 200), rescale=(2, -1000)))
    hu = a.astype(float) * 2 - 1000
    np.testing.assert_array_equal(r.array, dicom_linear_window(hu, 0, 200))
    assert r.array.min() == 0 and r.array.max() == 255


def test_dicom_without_window_uses_auto_window():
    r = decode_image(make_dicom(ramp(h=40, w=64, hi=4095, dtype=np.uint16), bits_stored=12))
    assert r.array[0, 0] == 0 and r.array[0, -1] == 255
    assert any("percentile" in n for n in r.notices)


def test_dicom_invalid_window_degrades_to_auto_window():
    r = decode_image(make_dicom(ramp(h=40, w=64, hi=4095, dtype=np.uint16), bits_stored=12, window=(100, 0)))
    assert_valid(r)
    assert any("invalid" in n for n in r.notices)


def test_dicom_monochrome1_is_inverted():
    a = ramp(h=40, w=64, hi=4095, dtype=np.uint16)
    m2 = decode_image(make_dicom(a, bits_stored=12, window=(2048, 4096))).array
    m1r = decode_image(make_dicom(a, photometric="MONOCHROME1", bits_stored=12, window=(2048, 4096)))
    np.testing.assert_array_equal(m1r.array, 255 - m2)
    assert m1r.array[0, 0] == 255 and m1r.array[0, -1] == 0
    assert any("MONOCHROME1" in n for n in m1r.notices)


def test_dicom_signed_pixels():
    a = (ramp(h=40, w=64, hi=2000, dtype=np.int32) - 1000).astype(np.int16)
    r = decode_image(make_dicom(a, bits_stored=16))
    assert r.array[0, 0] == 0 and r.array[0, -1] == 255


def test_dicom_multiframe_first_frame_with_notice():
    frames = np.stack([np.full((40, 48), v, np.uint8) for v in (10, 100, 200)])
    frames[0, :, :24] = 250  # frame 1 has a bright left half
    r = decode_image(make_dicom(frames))
    assert_valid(r)
    assert r.array.shape == (40, 48)
    assert (r.array[:, :24] > r.array[:, 24:]).all()
    assert "Multi-frame DICOM: showing frame 1 of 3." in r.notices


def test_dicom_8bit_and_1bit_without_window_use_nominal_range():
    a = ramp(h=40, w=64)
    r = decode_image(make_dicom(a))
    np.testing.assert_array_equal(r.array, a)
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(a)))
    ds.set_pixel_data((a > 127).astype(np.uint8), "MONOCHROME2", 1)
    buf = io.BytesIO()
    ds.save_as(buf)
    r1 = decode_image(buf.getvalue())
    np.testing.assert_array_equal(r1.array, np.where(a > 127, 255, 0).astype(np.uint8))


def test_decoded_image_is_frozen_and_compares_by_identity():
    r = decode_image(pil_bytes(ramp(), "PNG"))
    with pytest.raises(AttributeError):
        r.format = "JPEG"  # type: ignore[misc]
    assert r == r and r != decode_image(pil_bytes(ramp(), "PNG"))


def test_dicom_rgb_to_gray():
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 1] = 255  # pure green → luma 150
    r = decode_image(make_dicom(rgb, photometric="RGB"))
    assert (r.array == 150).all()
    assert any("Colour DICOM" in n for n in r.notices)


def test_dicom_no_pixel_data():
    err = expect_error(make_dicom(ramp(), with_pixels=False), "no_pixel_data")
    no_phi(err.message, err.detail, repr(err))


def test_dicom_without_preamble_by_content_and_by_name():
    data = make_dicom(ramp(h=40, w=64), preamble=False)
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(decode_image(data).array, ramp(h=40, w=64))
    np.testing.assert_array_equal(decode_image(data, filename="study.DCM").array, ramp(h=40, w=64))


def test_dicom_named_file_that_is_not_dicom():
    expect_error(b"\x01\x02\x03 not dicom at all" * 10, "not_an_image", filename="scan.dcm")


def test_dicom_rle_compressed():
    from pydicom.uid import RLELossless

    a = ramp(h=40, w=64, hi=4095, dtype=np.uint16)
    r = decode_image(make_dicom(a, bits_stored=12, window=(2048, 4096), transfer_syntax=RLELossless))
    ref = decode_image(make_dicom(a, bits_stored=12, window=(2048, 4096)))
    np.testing.assert_array_equal(r.array, ref.array)


def test_dicom_jpeg_baseline_compressed():
    # pydicom has no JPEG encoder; Pillow's baseline JPEG, encapsulated, is a valid
    # JPEG Baseline (1.2.840.10008.1.2.4.50) DICOM decoded by pylibjpeg / Pillow.
    from pydicom.uid import JPEGBaseline8Bit

    a = ramp(h=40, w=64)
    data = encapsulated_dicom(pil_bytes(a, "JPEG", quality=95), a.shape, 8, JPEGBaseline8Bit)
    r = decode_image(data)
    assert_valid(r)
    assert r.format == "DICOM"
    assert np.abs(r.array.astype(int) - a).max() <= 6


def test_dicom_jpeg2000_lossless_16bit():
    from pydicom.uid import JPEG2000Lossless

    a = ramp(h=40, w=64, hi=4095, dtype=np.uint16)
    try:
        j2k = pil_bytes(Image.fromarray(a), "JPEG2000", irreversible=False, no_jp2=True)
    except OSError as exc:  # Pillow built without OpenJPEG
        missing_dependency(f"Pillow's JPEG 2000 codec (OpenJPEG) is missing: {exc}")
    r = decode_image(encapsulated_dicom(j2k, a.shape, 12, JPEG2000Lossless))
    assert r.array[0, 0] == 0 and r.array[0, -1] == 255


def test_dicom_bomb_rejected_before_decoding():
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(ramp(h=40, w=64))))
    ds.Rows, ds.Columns = 60000, 60000  # 3.6 GP declared, 2.5 kB stored
    buf = io.BytesIO()
    ds.save_as(buf)
    err = expect_error(buf.getvalue(), "too_large")
    assert "MP" in err.message


def test_dicom_errors_never_carry_patient_identifiers():
    good = make_dicom(ramp(h=40, w=64))
    cut = good[: len(good) - 700]  # pixel data cut short
    with pytest.raises(ImageDecodeError) as info:
        decode_image(cut)
    err = info.value
    no_phi(err.message, err.detail, repr(err))
    assert err.__cause__ is None and err.__context__ is None


# ----------------------------------------------------------------------------- rejections


def test_zero_bytes():
    expect_error(b"", "empty")
    expect_error(bytearray(), "empty")


def test_over_max_bytes():
    err = expect_error(pil_bytes(ramp(), "PNG"), "too_large", limits=DecodeLimits(max_bytes=100))
    assert "MiB" in err.message


def test_text_file():
    err = expect_error(b"patient,label\n1,NORMAL\n" * 20, "not_an_image")
    assert "text" in err.message


def test_random_bytes():
    rng = np.random.default_rng(0)
    expect_error(bytes(rng.integers(0, 256, 5000, dtype=np.uint8)[1:]), "not_an_image")


def test_truncated_png_and_jpeg():
    png = pil_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8), "PNG")
    expect_error(png[: len(png) // 2], "truncated")
    expect_error(png[:20], "truncated")
    jpg = pil_bytes(ramp(), "JPEG")
    expect_error(jpg[: len(jpg) // 2], "truncated")


def test_corrupt_png_data():
    png = bytearray(pil_bytes(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8), "PNG"))
    start = png.index(b"IDAT") + 8
    png[start : start + 40] = b"\xff" * 40  # garbage inside the zlib stream
    expect_error(bytes(png), "corrupt")


def test_png_bomb_header_rejected_cheaply():
    # 100000 × 100000 declared in a 70-byte file: Pillow's own bomb error → typed error.
    expect_error(png_header_only(100_000, 100_000), "too_large")
    # 10000 × 10000 (100 MP): above our 50 MP limit, below Pillow's error threshold.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect_error(png_header_only(10_000, 10_000), "too_large")
    # 8000 × 8000 (64 MP): only our limit catches it.
    expect_error(png_header_only(8_000, 8_000), "too_large")
    # A custom, lower limit.
    expect_error(pil_bytes(ramp(), "PNG"), "too_large", limits=DecodeLimits(max_pixels=1000))


def test_pillow_bomb_warning_as_error_is_typed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `python -W error`
        expect_error(png_header_only(10_000, 10_000), "too_large", limits=DecodeLimits(max_pixels=10**9))


def test_jpeg_bomb_header():
    expect_error(jpeg_with_size(pil_bytes(ramp(), "JPEG"), 65000, 65000), "too_large")


def test_too_small_image():
    err = expect_error(pil_bytes(ramp(h=20, w=20), "PNG"), "too_small")
    assert "20 × 20" in err.message
    expect_error(make_dicom(ramp(h=16, w=64)), "too_small")


def test_unreadable_path_and_bad_type(tmp_path: Path):
    expect_error(tmp_path / "missing.png", "unreadable")
    expect_error(tmp_path, "unreadable")
    expect_error(12345, "unsupported")


def test_error_type_contract():
    err = ImageDecodeError("no_pixel_data")
    assert isinstance(err, ValueError) and err.code == "no_pixel_data" and err.message
    assert set(ERROR_CODES) >= {
        "empty",
        "truncated",
        "not_an_image",
        "too_large",
        "too_small",
        "no_pixel_data",
        "unsupported",
        "corrupt",
    }


# ----------------------------------------------------------------------------- inputs


def test_paths_buffers_and_uploaded_file_like(tmp_path: Path):
    data = pil_bytes(ramp(), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for src in (data, bytearray(data), memoryview(data), str(path), path):
        np.testing.assert_array_equal(decode_image(src).array, ramp())
    np.testing.assert_array_equal(read_gray(path), ramp())
    upload = io.BytesIO(data)
    upload.read()  # a moved position must not matter (Streamlit's UploadedFile is a BytesIO)
    np.testing.assert_array_equal(decode_image(upload).array, ramp())
    expect_error(path, "too_large", limits=DecodeLimits(max_bytes=50))


def test_decoding_bytes_writes_nothing(monkeypatch):
    samples = [pil_bytes(ramp(), "PNG"), pil_bytes(ramp(), "JPEG"), make_dicom(ramp(h=40, w=64))]
    for s in samples:  # warm up lazy imports first
        decode_image(s)
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"decode_image tried to write {file!r}")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    for s in samples:
        assert_valid(decode_image(s))


def test_supported_extensions():
    assert {"png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"} <= set(SUPPORTED_EXTENSIONS)
    assert all(e == e.lower() and not e.startswith(".") for e in SUPPORTED_EXTENSIONS)


# ----------------------------------------------------------------------------- real data


def test_real_cxr_mini_files(cxr_mini: Path):
    with open(cxr_mini / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_label: dict[str, dict[str, str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], row)
    picked = list(by_label.values())[:2] + rows[-1:]
    for row in picked:
        r = decode_image(cxr_mini / row["path"])
        assert_valid(r)
        assert r.format == "JPEG"
        # cxr-mini files are resized copies (longer side 384) of the sizes in the manifest.
        with Image.open(cxr_mini / row["path"]) as im:
            assert r.original_shape == (im.height, im.width) == r.array.shape
        assert max(r.array.shape) == 384
        orig_aspect = int(row["orig_width"]) / int(row["orig_height"])
        assert abs(r.array.shape[1] / r.array.shape[0] - orig_aspect) < 0.02
        assert r.array.std() > 10, "a real radiograph has contrast"
