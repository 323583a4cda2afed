"""Property-based fuzzing of cxr_core.imaging.decode_image (Hypothesis).

Property: for ANY input, decode_image either returns a valid DecodedImage (2-D uint8,
C-contiguous, sides >= min_side, pixels <= max_pixels) or raises ImageDecodeError with
a known code and a message. Any other exception fails the test.

Inputs: random bytes, random bytes behind each format's magic number, valid PNG / JPEG
/ DICOM / BMP / TIFF / GIF / WebP files mutated by byte flips, overwrites, truncations,
insertions and deletions, DICOM files whose image-pixel header is generated field by
field, and PNGs whose IHDR is generated with a valid CRC. A normal run executes 2,900
inputs (``CXR_FUZZ_SCALE`` multiplies that); run with ``-s`` to see how many were
accepted and rejected, by error code.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr_core.config import DecodeLimits
from cxr_core.imaging import ERROR_CODES, DecodedImage, ImageDecodeError, decode_image

# pydicom and Pillow warn a lot about malformed input; the property is about exceptions.
pytestmark = pytest.mark.filterwarnings("ignore")

#: A lower pixel ceiling than the app's keeps each example fast (a mutated header can
#: declare a large image that the decoder would allocate before finding the data short).
LIMITS = DecodeLimits(max_bytes=4 * 1024 * 1024, max_pixels=2_000_000, min_side=32)
PHI = ("Doe^Jane^Secret", "PHI-9876543")
FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "DICOM"}


#: CXR_FUZZ_SCALE=10 runs ten times as many inputs (a deeper, slower run for nightly use).
FUZZ_SCALE = float(os.environ.get("CXR_FUZZ_SCALE", "1"))


def fuzz_settings(n: int):
    return settings(
        max_examples=max(1, round(n * FUZZ_SCALE)),
        deadline=None,
        database=None,  # no .hypothesis/ folder in the repo
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ----------------------------------------------------------------------------- bookkeeping

STATS: dict[str, Counter] = {}
CODES: Counter = Counter()
_T0 = time.perf_counter()


def check(data: bytes, group: str, *, filename: str | None = None, dicom: bool = False) -> None:
    """Assert the property for one input and count the outcome."""
    counter = STATS.setdefault(group, Counter())
    try:
        r = decode_image(data, filename=filename, limits=LIMITS)
    except ImageDecodeError as err:
        assert err.code in ERROR_CODES, err.code
        assert isinstance(err.message, str) and err.message
        if dicom:
            for secret in PHI:
                assert secret not in err.message and secret not in str(err.detail)
        counter["rejected"] += 1
        counter["code:" + err.code] += 1
        CODES[err.code] += 1
        return
    assert isinstance(r, DecodedImage)
    a = r.array
    assert isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype == np.uint8 and a.flags.c_contiguous
    assert min(a.shape) >= LIMITS.min_side and a.size <= LIMITS.max_pixels
    assert r.format in FORMATS
    assert isinstance(r.bit_depth, int) and r.bit_depth > 0
    assert len(r.original_shape) == 2 and all(isinstance(v, int) for v in r.original_shape)
    assert isinstance(r.notices, tuple) and all(isinstance(n, str) for n in r.notices)
    if dicom:
        for secret in PHI:
            assert secret not in repr(r.notices)
    counter["accepted"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    total = sum(c["accepted"] + c["rejected"] for c in STATS.values())
    accepted = sum(c["accepted"] for c in STATS.values())
    lines = [
        f"\n[imaging fuzz] {total} inputs in {time.perf_counter() - _T0:.1f} s: "
        f"{accepted} accepted, {total - accepted} rejected"
    ]
    for group, c in STATS.items():
        codes = ", ".join(f"{k[5:]}={v}" for k, v in c.most_common() if k.startswith("code:"))
        lines.append(
            f"  {group:<26} {c['accepted'] + c['rejected']:5d} inputs {c['accepted']:5d} accepted "
            f"{c['rejected']:5d} rejected ({codes})"
        )
    lines.append("  rejections by code: " + ", ".join(f"{k}={v}" for k, v in CODES.most_common()))
    print("\n".join(lines))


# ----------------------------------------------------------------------------- seed files


def _pil(im: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


_rng = np.random.default_rng(7)
_G8 = (_rng.integers(0, 256, (40, 48)) // 16 * 16).astype(np.uint8)  # compressible, not flat
_G16 = _G8.astype(np.uint16) * 16 + 3
_RGB = np.dstack([_G8, _G8[::-1], _G8[:, ::-1]])
_RGBA = np.dstack([_RGB, _G8])


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil(_G8, "JPEG", exif=exif.tobytes())


PNG_SEEDS = [
    _pil(_G8, "PNG"),
    _pil(_G16, "PNG"),
    _pil(_RGBA, "PNG"),
    _pil(Image.fromarray(_RGB).convert("P"), "PNG"),
    _pil(Image.fromarray(_G8 > 100), "PNG"),
]
JPEG_SEEDS = [
    _pil(_G8, "JPEG", quality=90),
    _pil(_RGB, "JPEG", quality=80),
    _pil(_G8, "JPEG", progressive=True),
    _exif_jpeg(),
]
OTHER_SEEDS = [
    _pil(_G8, "BMP"),
    _pil(_RGB, "BMP"),
    _pil(_G8, "TIFF"),
    _pil(_G16, "TIFF"),
    _pil(Image.fromarray(_G8), "TIFF", save_all=True, append_images=[Image.fromarray(_G8[::-1])]),
    _pil(Image.fromarray(_G8), "GIF", save_all=True, append_images=[Image.fromarray(_G8.T[:40, :48])]),
    _pil(_G8, "WEBP", lossless=True),
]


def _dicom(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int | None = None,
    extra: dict | None = None,
    compress: str | None = None,
    preamble: bool = True,
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.PatientName, ds.PatientID = PHI
    ds.Modality = "DX"
    ds.set_pixel_data(
        pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False
    )
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    if not preamble:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
        return buf.getvalue()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if compress:
        ds.compress(compress)
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _jpeg_dicom() -> bytes:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dcmread(io.BytesIO(_dicom(_G8)))
    ds.PixelData = encapsulate([_pil(_G8, "JPEG")])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


DICOM_SEEDS = [
    _dicom(_G16, bits_stored=12, extra={"WindowCenter": 1500, "WindowWidth": 2000}),
    _dicom(_G16, "MONOCHROME1", bits_stored=12, extra={"RescaleSlope": 2, "RescaleIntercept": -1024}),
    _dicom(np.stack([_G8, _G8[::-1], _G8])),
    _dicom(_RGB, "RGB"),
    _dicom(_G16, bits_stored=12, compress="1.2.840.10008.1.2.5"),  # RLE Lossless
    _jpeg_dicom(),
    _dicom(_G8, preamble=False),
]


# ----------------------------------------------------------------------------- mutation


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        n = len(data)
        # Edits land in the magic number, in the first 400 bytes (headers) or anywhere, in
        # equal shares; Hypothesis favours small integers, so the regions start apart.
        i = draw(
            st.one_of(
                st.integers(0, min(n, 16) - 1),
                st.integers(min(n - 1, 16), min(n, 400) - 1),
                st.integers(0, n - 1).map(lambda k, n=n: n - 1 - k),
            )
        )
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "delete", "dup")))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255)))))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:  # duplicate a slice (repeated chunks / segments)
            j = min(n, i + draw(st.integers(1, 128)))
            data[i:i] = data[i:j]
    return bytes(data)


NAMES = st.sampled_from([None, "upload.png", "study.dcm", "scan.jpg", "x.dicom"])


# ----------------------------------------------------------------------------- fuzz tests


@fuzz_settings(400)
@given(data=st.binary(max_size=4096), filename=NAMES)
def test_fuzz_random_bytes(data, filename):
    check(data, "random bytes", filename=filename, dicom=True)


MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"\x00" * 128 + b"DICM",
    b"\x08\x00\x05\x00CS",
]


@fuzz_settings(300)
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=2048), filename=NAMES)
def test_fuzz_magic_plus_random(magic, tail, filename):
    check(magic + tail, "magic + random bytes", filename=filename, dicom=True)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC so that a mutation reaches the decoder, not the CRC check."""
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            break
        body = data[pos + 4 : end - 4]
        out += data[pos : pos + 4] + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end
    return bytes(out + data[pos:])


@fuzz_settings(450)
@given(data=mutated(PNG_SEEDS), fix_crc=st.booleans())
def test_fuzz_mutated_png(data, fix_crc):
    check(fix_png_crcs(data) if fix_crc else data, "mutated PNG")


@fuzz_settings(350)
@given(data=mutated(JPEG_SEEDS))
def test_fuzz_mutated_jpeg(data):
    check(data, "mutated JPEG")


@fuzz_settings(300)
@given(data=mutated(OTHER_SEEDS))
def test_fuzz_mutated_bmp_tiff_gif_webp(data):
    check(data, "mutated BMP/TIFF/GIF/WEBP")


@fuzz_settings(500)
@given(data=mutated(DICOM_SEEDS), filename=st.sampled_from([None, "study.dcm"]))
def test_fuzz_mutated_dicom(data, filename):
    check(data, "mutated DICOM", filename=filename, dicom=True)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


#: Valid (colour type, bit depth) pairs of the PNG specification.
PNG_VALID = (
    [(0, d) for d in (1, 2, 4, 8, 16)]
    + [(2, 8), (2, 16), (4, 8), (4, 16), (6, 8), (6, 16)]
    + [(3, d) for d in (1, 2, 4, 8)]
)


@fuzz_settings(200)
@given(
    width=st.one_of(st.integers(32, 300), st.integers(0, 2**31 - 1)),
    height=st.one_of(st.integers(32, 300), st.integers(0, 2**31 - 1)),
    colour_depth=st.one_of(
        st.sampled_from(PNG_VALID),
        st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255]), st.sampled_from([0, 1, 3, 8, 16, 32, 255])),
    ),
    interlace=st.one_of(st.integers(0, 1), st.integers(2, 255)),
    palette=st.one_of(st.none(), st.integers(0, 300)),  # number of PLTE entries
    body=st.one_of(
        st.just(b"exact"), st.binary(max_size=512), st.integers(0, 400_000).map(lambda n: b"\x00" * n)
    ),
)
def test_fuzz_png_header_fields(width, height, colour_depth, interlace, palette, body):
    """IHDR (and PLTE) generated freely but with valid CRCs, so decoding goes past the header."""
    colour, depth = colour_depth
    if body == b"exact":  # as many scanline bytes as a non-interlaced image needs (capped)
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
        row = (width * channels * max(depth, 1) + 7) // 8 + 1
        body = bytes(min(row * height, 400_000))  # filter type 0, pixel value 0
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    plte = b"" if palette is None else _png_chunk(b"PLTE", (bytes(range(256)) * 3)[: 3 * palette])
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + plte
        + _png_chunk(b"IDAT", zlib.compress(body))
        + _png_chunk(b"IEND", b"")
    )
    check(data, "PNG header fields")


NATIVE_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
OTHER_SYNTAXES = [
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.3.4",
]
WILD_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e9, -1e9]),
)
#: Out-of-spec values per field; each input breaks up to three fields of a consistent header.
WILD = {
    "rows": st.one_of(st.integers(0, 80), st.integers(0, 65535)),
    "cols": st.one_of(st.integers(0, 80), st.integers(0, 65535)),
    "bits_allocated": st.sampled_from([0, 1, 12, 32, 64, 255]),
    "bits_stored": st.integers(0, 70),
    "pixel_rep": st.integers(0, 3),
    "samples": st.sampled_from([0, 2, 3, 4, 9]),
    "photometric": st.sampled_from(
        ["RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "XYZ", "", "MONOCHROME3"]
    ),
    "frames": st.one_of(st.integers(-1, 5), st.just(2**31 - 1)),
    "window": st.tuples(WILD_FLOATS, WILD_FLOATS),
    "rescale": st.tuples(WILD_FLOATS, WILD_FLOATS),
    "voi_function": st.sampled_from(["BOGUS", "", "sigmoid"]),
    "voi_lut": st.tuples(
        st.integers(0, 70000),
        st.integers(-70000, 70000),
        st.integers(0, 40),
        st.lists(st.integers(0, 65535), max_size=300),
    ),
    "tsyntax": st.sampled_from(OTHER_SYNTAXES + [""]),
    "pixel_len": st.one_of(st.integers(0, 64), st.integers(0, 40 * 48 * 8)),
}


@st.composite
def dicom_header_fields(draw) -> dict:
    """A consistent image-pixel header (often decodable), then up to three fields broken."""
    colour = draw(st.booleans().map(lambda b: b and draw(st.integers(0, 3)) == 0))  # ~1 in 8
    ba = 8 if colour else draw(st.sampled_from([8, 16]))
    f = {
        "rows": draw(st.integers(32, 64)),
        "cols": draw(st.integers(32, 64)),
        "bits_allocated": ba,
        "bits_stored": draw(st.sampled_from([8] if ba == 8 else [10, 12, 14, 16])),
        "pixel_rep": 0 if colour else draw(st.integers(0, 1)),
        "samples": 3 if colour else 1,
        "photometric": "RGB" if colour else draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"])),
        "frames": draw(st.one_of(st.none(), st.integers(1, 3))),
        "window": draw(st.one_of(st.none(), st.tuples(st.floats(-2000, 5000), st.floats(1, 5000)))),
        "rescale": draw(st.one_of(st.none(), st.tuples(st.floats(0.1, 4), st.floats(-2000, 2000)))),
        "voi_function": draw(st.sampled_from([None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])),
        "voi_lut": draw(
            st.one_of(
                st.none(),
                st.tuples(
                    st.integers(1, 256),
                    st.integers(-100, 2000),
                    st.sampled_from([8, 12, 16]),
                    st.lists(st.integers(0, 255), min_size=1, max_size=256),
                ),
            )
        ),
        "tsyntax": draw(st.sampled_from(NATIVE_SYNTAXES)),
        "pixel_len": -1,  # exactly what the header asks for
        "seed": draw(st.integers(0, 2**16)),
    }
    for name in draw(st.sets(st.sampled_from(sorted(WILD)), max_size=3)):
        f[name] = draw(WILD[name])
    return f


def build_dicom_from_fields(f: dict) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.PatientName, ds.PatientID = PHI
    ds.Rows, ds.Columns = f["rows"], f["cols"]
    ds.BitsAllocated, ds.BitsStored = f["bits_allocated"], f["bits_stored"]
    ds.HighBit = max(0, f["bits_stored"] - 1)
    ds.PixelRepresentation = f["pixel_rep"]
    ds.SamplesPerPixel = f["samples"]
    if f["samples"] > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = f["photometric"]
    if f["frames"] is not None:
        ds.NumberOfFrames = f["frames"]
    if f["window"] is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:.6g}"[:16] for v in f["window"])
    if f["rescale"] is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:.6g}"[:16] for v in f["rescale"])
    if f["voi_function"] is not None:
        ds.VOILUTFunction = f["voi_function"]
    if f["voi_lut"] is not None:
        n, first, depth, values = f["voi_lut"]
        item = Dataset()
        # Both tags have an ambiguous VR (US/SS, US/OW); pin US so pydicom can write them.
        item.add_new(0x00283002, "US", [n % 65536, first % 65536, depth % 65536])
        item.add_new(0x00283006, "US", values)
        ds.VOILUTSequence = [item]
    pixel_len = f["pixel_len"]
    if pixel_len == -1:
        frames = f["frames"] if isinstance(f["frames"], int) and 1 <= f["frames"] <= 3 else 1
        bits = max(f["bits_allocated"], 1)
        pixel_len = min((f["rows"] * f["cols"] * max(f["samples"], 1) * bits * frames + 7) // 8, 1 << 20)
    payload = np.random.default_rng(f["seed"]).integers(0, 256, pixel_len, dtype=np.uint8).tobytes()
    tsyntax = UID(f["tsyntax"] or "1.2.840.10008.1.2.1")
    compressed = tsyntax.is_transfer_syntax and tsyntax.is_compressed
    # Fragments must be even-length and non-empty.
    ds.PixelData = encapsulate([payload.ljust(2 + len(payload) // 2 * 2, b"\x00")]) if compressed else payload
    ds["PixelData"].VR = "OB" if compressed or f["bits_allocated"] <= 8 else "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = tsyntax
    ds.file_meta = meta
    buf = io.BytesIO()
    if tsyntax.is_transfer_syntax:
        ds.save_as(buf, enforce_file_format=True)
    else:
        # pydicom cannot encode with an unknown syntax: write explicit VR LE, keep the bogus UID.
        ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


@fuzz_settings(400)
@given(fields=dicom_header_fields(), filename=st.sampled_from([None, "study.dcm"]))
def test_fuzz_dicom_header_fields(fields, filename):
    """Image-pixel, LUT and window fields generated one by one: reject or cope, never crash."""
    check(build_dicom_from_fields(fields), "DICOM header fields", filename=filename, dicom=True)


def test_fuzz_volume():
    """The fuzz tests above must have run the promised number of inputs (>= 2,000)."""
    expected = {
        "random bytes",
        "magic + random bytes",
        "mutated PNG",
        "mutated JPEG",
        "mutated BMP/TIFF/GIF/WEBP",
        "mutated DICOM",
        "PNG header fields",
        "DICOM header fields",
    }
    if not expected <= STATS.keys():
        pytest.skip("only part of the fuzz module was selected")
    total = sum(c["accepted"] + c["rejected"] for c in STATS.values())
    assert total >= 2000 * min(FUZZ_SCALE, 1), total
    # Seeds and their light mutations must not all be rejected: the decoder really decodes.
    assert sum(c["accepted"] for c in STATS.values()) > 200
