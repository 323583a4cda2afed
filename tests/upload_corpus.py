"""Malformed, odd and valid uploads built in memory, and a file-access recorder, for the safety tests.

Each :class:`Case` is one file a workstation might hand the uploader, with what the Predict
page must do with it: reject it with a specific message, or accept it (with a notice where
the decoder had to drop or change something). Nothing here touches the disk.
:class:`FileAccessRecorder` wraps ``open`` / ``io.open`` / ``os.open`` to see which files code opens.
"""

from __future__ import annotations

import builtins
import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

#: Fake patient identifiers written into the DICOM cases; they must never reach the UI or state.
PHI_NAME = "Doe^Jane^Secret"
PHI_ID = "PHI-9876543"
PHI_STRINGS = (PHI_NAME, PHI_ID, "Doe^Jane", "9876543")


@dataclass(frozen=True)
class Case:
    """One upload and the outcome the Predict page owes it."""

    id: str
    name: str
    data: bytes
    #: "reject": an st.error naming the file with ``expect`` in it, no prediction.
    #: "accept": a prediction (two metrics) and, if ``expect`` is set, an st.info notice containing it.
    outcome: str
    expect: str = ""
    mime: str = "application/octet-stream"


def phantom(size: int = 128, seed: int = 0, subtype: str = "normal") -> np.ndarray:
    """A chest-like uint8 image (the synthetic phantom the demo models were trained on)."""
    from cxr_core.synthetic import make_phantom

    return make_phantom(subtype, seed, size).image


def pil_bytes(im: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring ``width`` × ``height`` pixels with almost no data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def dicom(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    preamble: bool = True,
    transfer_syntax: str | None = None,
    shape: tuple[int, int] = (256, 256),
) -> bytes:
    """A DX DICOM file carrying fake patient identifiers; ``pixels=None`` leaves out the pixel data
    (the header then says ``shape``).

    A 3-D ``pixels`` (frames, rows, columns) makes a multi-frame file. Without a preamble the file
    is an old-style bare data set (implicit VR little endian, no file meta).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.PatientBirthDate = "20190101"
    ds.InstitutionName = "Secret Children's Hospital 9876543"
    ds.Modality = "DX"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    else:
        ds.Rows, ds.Columns = shape
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    buf = io.BytesIO()
    if preamble:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def jpeg_dicom(gray: np.ndarray) -> bytes:
    """A DICOM whose pixel data is a baseline JPEG codestream (JPEG Baseline transfer syntax)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([pil_bytes(gray, "JPEG", quality=95)])
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("study/IM0001.dcm", b"not really")
    return buf.getvalue()


def corpus() -> list[Case]:
    """Every case, rejections first. Built fresh on each call (a few hundred kB in all)."""
    img = phantom(128)
    png = pil_bytes(img, "PNG")
    jpeg = pil_bytes(img, "JPEG", quality=90)
    rng = np.random.default_rng(7)
    deep = (img.astype(np.uint16) * 16 + rng.integers(0, 16, img.shape)).astype(np.uint16)  # 12 bits in 16
    frames = [Image.fromarray(phantom(96, seed=s)) for s in range(3)]
    m1 = 4095 - deep  # MONOCHROME1 stores bone dark
    return [
        # ------------------------------------------------------------------ rejected, each with its reason
        Case("zero_bytes", "empty.png", b"", "reject", "empty (0 bytes)"),
        Case("truncated_png", "cut.png", png[: len(png) // 2], "reject", "incomplete"),
        Case("truncated_jpeg", "cut.jpg", jpeg[: len(jpeg) // 3], "reject", "incomplete"),
        Case("png_header_only", "head.png", png[:40], "reject", "incomplete"),
        Case("corrupt_png_data", "bad.png", png[:60] + bytes(rng.integers(0, 256, 4000, dtype=np.uint8)),
             "reject", "damaged"),
        Case("random_bytes", "noise.bin", bytes(rng.integers(0, 256, 5000, dtype=np.uint8)), "reject",
             "not an image"),
        Case("plain_text", "notes.txt", b"Patient seen today, see attached X-ray.\n" * 20, "reject",
             "contains text"),
        Case("html", "report.png", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
             "reject", "contains text"),
        Case("svg", "chest.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"></svg>',
             "reject", "contains text"),
        Case("zip", "study.zip", _zip(), "reject", "not an image"),
        Case("pdf_header", "report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
             + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)), "reject", "not an image"),
        Case("png_bomb", "bomb.png", png_bomb(100_000, 100_000), "reject", "too many pixels"),
        Case("png_64_megapixels", "big.png", png_bomb(8000, 8000), "reject", "8000 × 8000 pixels (64.0 MP)"),
        Case("jpeg_bomb_header", "bomb.jpg", _jpeg_with_size(jpeg, 60_000, 60_000), "reject", "too many pixels"),
        Case("tiny_10x10", "tiny.png", pil_bytes(np.full((10, 10), 128, np.uint8), "PNG"), "reject",
             "10 × 10 pixels"),
        Case("dicom_no_pixels", "report.dcm", dicom(None), "reject", "no pixel data"),
        Case("dicom_truncated", "IM0002", dicom(deep, bits_stored=12)[:1500], "reject", "DICOM"),
        Case("dicom_named_but_text", "scan.dcm", b"this file only pretends to be DICOM", "reject",
             "named like DICOM"),
        Case("dicm_magic_garbage", "IM0003", b"\x00" * 128 + b"DICM" + bytes(rng.integers(0, 256, 600, dtype=np.uint8)),
             "reject", "DICOM"),
        Case("gif_tiny_frames", "tiny.gif", pil_bytes(Image.new("L", (8, 8)), "GIF"), "reject", "8 × 8 pixels"),
        # ------------------------------------------------------------------ accepted (some with a notice)
        Case("png_8bit", "chest.png", png, "accept", mime="image/png"),
        Case("png_16bit", "chest16.png", pil_bytes(deep, "PNG"), "accept", "Scaled to 8 bits", "image/png"),
        Case("jpeg_no_extension", "chest", jpeg, "accept", mime="application/octet-stream"),
        Case("odd_name", "  x-ray (copy 2).final.PNG.backup ", png, "accept"),
        Case("markdown_name", "**bold** `tick` [link](javascript:alert(1)).png", png, "accept"),
        Case("unicode_name", "рентген-грудной-клетки-小児.jpeg", jpeg, "accept"),
        Case("long_name", "a" * 250 + ".png", png, "accept"),
        Case("bmp", "chest.bmp", pil_bytes(img, "BMP"), "accept"),
        Case("rgba_png", "colour.png", pil_bytes(Image.fromarray(img).convert("RGBA"), "PNG"), "accept"),
        Case("animated_gif", "cine.gif",
             pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
             "accept", "Animated GIF: showing the first frame"),
        Case("multipage_tiff", "pages.tif", pil_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
             "accept", "Multi-page TIFF"),
        Case("dicom_with_phi", "IM0001", dicom(deep, bits_stored=12, window=(2048, 4096)), "accept",
             "DICOM window applied"),
        Case("dicom_bare_no_preamble", "IM0004", dicom(deep, bits_stored=12, preamble=False), "accept",
             "Scaled to 8 bits"),
        Case("dicom_multiframe", "cine.dcm", dicom(np.stack([deep, deep[::-1], deep[:, ::-1]]), bits_stored=12),
             "accept", "Multi-frame DICOM: showing frame 1 of 3"),
        Case("dicom_monochrome1", "m1.dcm", dicom(m1, photometric="MONOCHROME1", bits_stored=12), "accept",
             "MONOCHROME1 image inverted"),
        Case("dicom_jpeg_baseline", "IM0005.DCM", jpeg_dicom(img), "accept"),
    ]


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG (a header-only decompression bomb)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def valid_upload(seed: int = 0, subtype: str = "normal", size: int = 128) -> tuple[str, bytes, str]:
    """A valid PNG upload ``(name, bytes, mime)``; different seeds give different images."""
    return (f"valid-{subtype}-{seed}.png", pil_bytes(phantom(size, seed, subtype), "PNG"), "image/png")


class FileAccessRecorder:
    """Wraps builtins.open / io.open / os.open (install with a MonkeyPatch) and records every path opened.

    ``writes``: calls that could create or change a file (write, append, exclusive-create or update
    modes; O_WRONLY / O_RDWR / O_CREAT / O_APPEND / O_TRUNC). ``reads``: the rest.
    """

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.reads: list[str] = []
        self._open, self._io_open, self._os_open = builtins.open, io.open, os.open

    def _record(self, file: Any, writing: bool) -> None:
        (self.writes if writing else self.reads).append(os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike))
                                                        else repr(file))

    def open(self, file, mode="r", *args, **kwargs):
        self._record(file, any(c in str(mode) for c in "wax+"))
        return self._open(file, mode, *args, **kwargs)

    def io_open(self, file, mode="r", *args, **kwargs):
        self._record(file, any(c in str(mode) for c in "wax+"))
        return self._io_open(file, mode, *args, **kwargs)

    def os_open(self, path, flags, *args, **kwargs):
        self._record(path, bool(flags & self.WRITE_FLAGS))
        return self._os_open(path, flags, *args, **kwargs)

    def install(self, monkeypatch) -> FileAccessRecorder:
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.io_open)
        monkeypatch.setattr(os, "open", self.os_open)
        return self

    def touched(self, path: str | os.PathLike) -> list[str]:
        """Every recorded open of ``path`` or of anything under it (resolved, symlinks followed)."""
        target = os.path.realpath(path)
        return [p for p in self.reads + self.writes
                if not p.startswith("<") and (os.path.realpath(p) == target
                                              or os.path.realpath(p).startswith(target.rstrip("/") + "/"))]
