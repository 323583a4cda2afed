"""DICOM display: the technical header (never a patient field) and window/level over the stored values.

:func:`read_dicom` parses a DICOM upload in memory and keeps only what a viewer needs: the pixel
values of the first frame after the Modality LUT (float32), the display the file asks for (its VOI
LUT or window, else an automatic window) and a :class:`TechnicalHeader` built from an explicit
allow-list of technical attributes (:data:`HEADER_FIELDS`). Patient name, id, birth date,
accession number, institution, physicians, dates and UIDs are never read into any returned value,
so nothing downstream (page, table, CSV, report, log) can show them. Errors raise
``ImageDecodeError`` without the exception chain (whose frames hold the parsed dataset).

:func:`window` maps the values through a linear window (centre, width) the user chose, inverting
MONOCHROME1 so that bone is bright, like ``cxr_core.imaging.decode_image`` does for the default view.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .imaging import ImageDecodeError

__all__ = ["HEADER_FIELDS", "DicomStudy", "TechnicalHeader", "is_dicom", "read_dicom", "window"]

#: The only attributes ever read from a header for display: (keyword, label). Nothing else.
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("Modality", "Modality"),
    ("ViewPosition", "View position"),
    ("PhotometricInterpretation", "Photometric interpretation"),
    ("Rows", "Rows"),
    ("Columns", "Columns"),
    ("PixelSpacing", "Pixel spacing (mm)"),
    ("ImagerPixelSpacing", "Imager pixel spacing (mm)"),
    ("BitsStored", "Bits stored"),
    ("BitsAllocated", "Bits allocated"),
    ("NumberOfFrames", "Frames"),
)

_CODE = re.compile(r"[^A-Z0-9 _]")


@dataclass(frozen=True)
class TechnicalHeader:
    """Technical attributes of a DICOM image; code strings are reduced to ``[A-Z0-9 _]``, 16 characters."""

    modality: str | None
    view_position: str | None
    photometric: str | None
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None
    imager_pixel_spacing: tuple[float, float] | None
    bits_stored: int | None
    bits_allocated: int | None
    frames: int
    transfer_syntax: str | None
    #: What the file asks for: "VOI LUT", "window C/W" or None.
    stored_display: str | None

    def rows_for_display(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a header panel; absent attributes say "not stated"."""

        def sp(v: tuple[float, float] | None) -> str:
            return "not stated" if v is None else f"{v[0]:g} × {v[1]:g}"

        na = "not stated"
        return [
            ("Modality", self.modality or na),
            ("View position", self.view_position or na),
            ("Photometric interpretation", self.photometric or na),
            ("Rows × columns", f"{self.rows} × {self.columns}" if self.rows and self.columns else na),
            ("Pixel spacing (mm)", sp(self.pixel_spacing)),
            ("Imager pixel spacing (mm)", sp(self.imager_pixel_spacing)),
            ("Bits stored / allocated", f"{self.bits_stored or na} / {self.bits_allocated or na}"),
            ("Frames", str(self.frames)),
            ("Transfer syntax", self.transfer_syntax or na),
            ("Display stored in the file", self.stored_display or "none (automatic window)"),
        ]


@dataclass(frozen=True, eq=False)
class DicomStudy:
    """What the viewer keeps of a DICOM upload: values, default display and the technical header."""

    #: (H, W) float32, first frame, after the Modality LUT (rescale slope/intercept).
    values: np.ndarray
    header: TechnicalHeader
    #: The file's own window (centre, width) when it stores one; a VOI LUT table has none.
    file_window: tuple[float, float] | None
    #: An automatic window over the 0.5–99.5 percentiles of the values.
    auto_window: tuple[float, float]
    #: The range of the values (lowest, highest), for the window controls.
    value_range: tuple[float, float]

    @property
    def monochrome1(self) -> bool:
        return self.header.photometric == "MONOCHROME1"

    @property
    def has_voi_lut(self) -> bool:
        return self.header.stored_display == "VOI LUT"


def is_dicom(raw: bytes) -> bool:
    """A DICOM Part 10 file (``DICM`` at byte 128) or a bare dataset that pydicom reads with ``force``."""
    if len(raw) >= 132 and raw[128:132] == b"DICM":
        return True
    from .imaging import _looks_like_bare_dicom

    return _looks_like_bare_dicom(raw)


def _code(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if not isinstance(value, str | bytes):
        value = getattr(value, "value", value)
    text = _CODE.sub("", str(value).upper())[:16].strip()
    return text or None


def _int(ds: Any, keyword: str) -> int | None:
    try:
        v = ds.get(keyword)
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _pair(ds: Any, keyword: str) -> tuple[float, float] | None:
    try:
        v = ds.get(keyword)
        if v is None:
            return None
        a, b = float(v[0]), float(v[1])
        return (a, b) if math.isfinite(a) and math.isfinite(b) else None
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _first(value: object) -> float:
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _header(ds: Any) -> TechnicalHeader:
    from pydicom.uid import UID

    has_lut = bool(ds.get("VOILUTSequence"))
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    stored = None
    if has_lut:
        stored = "VOI LUT"
    elif c is not None and w is not None:
        try:
            stored = f"window C {_first(c):g} / W {_first(w):g}"
        except (TypeError, ValueError, IndexError):
            stored = None
    meta = getattr(ds, "file_meta", None)
    ts = None
    if meta is not None and meta.get("TransferSyntaxUID"):
        uid = UID(str(meta.TransferSyntaxUID))
        ts = uid.name if uid.is_transfer_syntax else None  # pydicom's own dictionary name, never header text
    return TechnicalHeader(
        modality=_code(ds, "Modality"),
        view_position=_code(ds, "ViewPosition"),
        photometric=_code(ds, "PhotometricInterpretation"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        pixel_spacing=_pair(ds, "PixelSpacing"),
        imager_pixel_spacing=_pair(ds, "ImagerPixelSpacing"),
        bits_stored=_int(ds, "BitsStored"),
        bits_allocated=_int(ds, "BitsAllocated"),
        frames=max(1, _int(ds, "NumberOfFrames") or 1),
        transfer_syntax=ts,
        stored_display=stored,
    )


def _file_window(ds: Any) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    try:
        cf, wf = _first(c), _first(w)
    except (TypeError, ValueError, IndexError):
        return None
    return (cf, wf) if math.isfinite(cf) and math.isfinite(wf) and wf > 0 else None


def read_dicom(raw: bytes) -> DicomStudy:
    """Parse a DICOM upload (in memory) for display; raises ``ImageDecodeError`` (without its chain)."""
    failure: ImageDecodeError
    try:
        return _read(raw)
    except ImageDecodeError as e:
        failure = e
    except Exception as e:  # pydicom messages may quote header values: only the type name survives
        failure = ImageDecodeError("corrupt", "The DICOM file could not be read for display.",
                                   detail=f"dicom_view: {type(e).__name__}")
    failure.__cause__ = None
    failure.__context__ = None
    raise failure.with_traceback(None)


def _read(raw: bytes) -> DicomStudy:
    import pydicom
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("no_pixel_data")
    header = _header(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        if meta is None:
            meta = ds.file_meta = FileMetaDataset()
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                  else ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    arr = np.asarray(pixel_array(ds, index=0))
    if arr.ndim != 2:
        raise ImageDecodeError("unsupported", "Window/level applies to grayscale DICOM images only.")
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ImageDecodeError("corrupt", "The DICOM image holds no finite pixel value.")
    lo, hi = float(finite.min()), float(finite.max())
    p_lo, p_hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if not p_hi > p_lo:
        p_lo, p_hi = lo, max(hi, lo + 1.0)
    auto = ((p_lo + p_hi) / 2.0, p_hi - p_lo)
    return DicomStudy(values=values, header=header, file_window=_file_window(ds), auto_window=auto,
                      value_range=(lo, hi if hi > lo else lo + 1.0))


def window(study: DicomStudy, center: float, width: float) -> np.ndarray:
    """(H, W) uint8 through a linear window (DICOM's definition, C.11.2.1.2); MONOCHROME1 inverted."""
    width = max(float(width), 1e-6)
    lo = float(center) - width / 2.0
    with np.errstate(all="ignore"):
        out = (study.values - lo) / width
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    gray = np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    if study.monochrome1:
        gray = 255 - gray
    return np.ascontiguousarray(gray)
