"""Decode any upload or dataset file into a validated 8-bit grayscale array.

One entry point, :func:`decode_image`, turns bytes (an upload) or a path (a dataset
file) into a :class:`DecodedImage` whose ``array`` is an ``(H, W)`` ``uint8``
C-contiguous array, or raises :class:`ImageDecodeError` with a short ``code`` and a
message a clinician can read. Every other exception from Pillow, pydicom, tifffile or
numpy is turned into ``ImageDecodeError(code="corrupt")``, so callers need exactly one
``except`` clause and never show a traceback.

Formats: PNG (8/16-bit, grey, RGB(A), palette), JPEG (incl. EXIF orientation), BMP,
TIFF (multi-page → first page), GIF/WebP (animated → first frame) and DICOM through
pydicom (Modality LUT, VOI LUT / window, MONOCHROME1 inversion, 12/16-bit, compressed
transfer syntaxes that the installed plugins decode, multi-frame → first frame, colour).

Uploads are never written to disk: everything works on ``io.BytesIO``.

Design decisions:

- Transparent pixels are composited over **black**. In a radiograph black means "no
  attenuation" (air, or the padding a viewer adds around an image); compositing over
  white would paint transparent margins as radio-dense material, which a classifier
  and Grad-CAM would read as bone or consolidation.
- Images deeper than 8 bits without a stored display window are scaled with a
  0.5–99.5 percentile window (min–max when that window is empty), never by dropping
  low bits: a 12-bit detector image stored in 16 bits would otherwise come out black.
  Pillow drops the low byte of 16-bit colour and grey+alpha PNGs, so those are read
  again at full depth with OpenCV (installed with grad-cam) once Pillow has checked
  the header and the data.
- Size limits are checked on the header before any pixel is decoded.
- Nothing read from a DICOM header reaches a returned value or error message except
  numbers (sizes, window) and the transfer-syntax name from pydicom's own dictionary,
  so patient identifiers cannot reach the UI through this module. Errors raised on the
  DICOM path also drop their exception chain, because the chained frames hold the
  parsed dataset. (pydicom itself may quote a malformed header value in a warning on
  the "pydicom" logger; a deployment that keeps logs should raise that logger's level.)
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cxr_core.config import DecodeLimits

__all__ = [
    "ERROR_CODES",
    "SUPPORTED_EXTENSIONS",
    "DecodedImage",
    "ImageDecodeError",
    "ImageSource",
    "decode_image",
    "read_gray",
]

#: Extensions for ``st.file_uploader(type=...)``. DICOM files without an extension are
#: decoded fine by :func:`decode_image` but the uploader's filter would refuse them.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    "png",
    "jpg",
    "jpeg",
    "bmp",
    "tif",
    "tiff",
    "gif",
    "webp",
    "dcm",
    "dicom",
)

_DEFAULT_MESSAGES: dict[str, str] = {
    "empty": "The file is empty (0 bytes).",
    "too_large": "The image is too large to open safely.",
    "too_small": "The image is too small to be a chest X-ray.",
    "truncated": "The image file is incomplete (it was cut off before the end).",
    "corrupt": "The image file is damaged and could not be decoded.",
    "not_an_image": (
        "This file is not an image that CXR Lens can read. "
        "Supported: PNG, JPEG, BMP, TIFF, GIF, WebP and DICOM."
    ),
    "no_pixel_data": "This DICOM file contains no image (no pixel data).",
    "unsupported": "This image uses a format or encoding that CXR Lens cannot decode.",
    "unreadable": "The file could not be read.",
}

#: Every ``ImageDecodeError.code`` this module raises.
ERROR_CODES: tuple[str, ...] = tuple(_DEFAULT_MESSAGES)


class ImageDecodeError(ValueError):
    """An image could not be turned into a usable grayscale array.

    ``code`` is a short slug from :data:`ERROR_CODES` for programs; ``message`` is a
    sentence for people; ``detail`` (optional) is technical context for logs and never
    contains DICOM header text.
    """

    def __init__(self, code: str, message: str | None = None, *, detail: str | None = None) -> None:
        if code not in _DEFAULT_MESSAGES:
            raise ValueError(f"unknown ImageDecodeError code {code!r}")
        self.code = code
        self.message = message or _DEFAULT_MESSAGES[code]
        self.detail = detail
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ImageDecodeError(code={self.code!r}, message={self.message!r})"


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays element-wise is not equality
class DecodedImage:
    """A decoded image ready for preprocessing and display."""

    #: ``(H, W)`` ``uint8``, C-contiguous; orientation already applied.
    array: np.ndarray
    #: Container format: "PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP" or "DICOM".
    format: str
    #: ``(H, W)`` of the source at full resolution, in display orientation (after EXIF
    #: orientation), so its aspect ratio matches ``array``. Equal to ``array.shape``
    #: today; kept separate so that a decoder that downsamples can still report it.
    original_shape: tuple[int, int]
    #: Bits per sample in the source (1, 4, 8, 12, 16, 32, ...).
    bit_depth: int
    #: Things the viewer should know, e.g. "Multi-frame DICOM: showing frame 1 of 12."
    notices: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- entry points


#: The limits used when a caller passes none (``cxr_core.config.DecodeLimits`` defaults).
DEFAULT_LIMITS = DecodeLimits()

#: What :func:`decode_image` accepts: bytes, a path, or a binary file-like object.
ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


def decode_image(
    data: ImageSource,
    *,
    filename: str | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> DecodedImage:
    """Decode ``data`` (bytes or a path) into an 8-bit grayscale :class:`DecodedImage`.

    ``filename`` only helps to pick the DICOM reader for files without the ``DICM``
    preamble; the content, not the name, decides the format otherwise. A binary
    file-like object (such as Streamlit's ``UploadedFile``) is accepted as well.

    Raises :class:`ImageDecodeError` and nothing else (``KeyboardInterrupt`` aside).
    """
    failure: ImageDecodeError
    try:
        raw, name = _load_bytes(data, filename, limits)
        return _decode_bytes(raw, name, limits)
    except ImageDecodeError:
        raise
    except MemoryError:
        failure = ImageDecodeError("too_large", "There is not enough memory to decode this image.")
    except RecursionError:
        failure = ImageDecodeError("corrupt", detail="RecursionError")
    except Exception as exc:  # the one place that guarantees a typed error
        failure = ImageDecodeError(
            "corrupt",
            "The image file is damaged or malformed and could not be decoded.",
            detail=f"{type(exc).__name__}: {exc}"[:300],
        )
    raise failure


def read_gray(path: str | os.PathLike[str], limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Dataset convenience: the ``(H, W)`` uint8 array of the image at ``path``."""
    return decode_image(path, limits=limits).array


# ----------------------------------------------------------------------------- input handling

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _load_bytes(data: Any, filename: str | None, limits: DecodeLimits) -> tuple[bytes, str | None]:
    """Read the input into memory, enforcing the byte limits before a full copy."""
    name = filename
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        name = filename or os.path.basename(path)
        try:
            size = os.stat(path).st_size
            if size > limits.max_bytes:
                raise _too_many_bytes(size, limits)
            with open(path, "rb") as fh:
                raw = fh.read(limits.max_bytes + 1)
        except OSError as exc:
            raise ImageDecodeError(
                "unreadable", f"Could not read {name!r}: {exc.strerror or type(exc).__name__}."
            ) from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        nbytes = data.nbytes if isinstance(data, memoryview) else len(data)
        if nbytes > limits.max_bytes:
            raise _too_many_bytes(nbytes, limits)
        # A private immutable copy: the caller may mutate a bytearray while we decode.
        raw = data if isinstance(data, bytes) else bytes(data)
    elif hasattr(data, "getvalue") or hasattr(data, "read"):
        # Streamlit's UploadedFile is a BytesIO; getvalue() ignores a moved read position.
        name = filename or getattr(data, "name", None)
        raw = data.getvalue() if hasattr(data, "getvalue") else data.read(limits.max_bytes + 1)
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise ImageDecodeError("unsupported", "The uploaded object did not provide bytes.")
        raw = bytes(raw)
    else:
        raise ImageDecodeError("unsupported", f"Cannot decode an object of type {type(data).__name__}.")
    if len(raw) == 0:
        raise ImageDecodeError("empty")
    if len(raw) > limits.max_bytes:
        raise _too_many_bytes(len(raw), limits)
    return raw, name


def _too_many_bytes(size: int, limits: DecodeLimits) -> ImageDecodeError:
    return ImageDecodeError(
        "too_large",
        f"The file is {_mib(size)}; the limit is {_mib(limits.max_bytes)}.",
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _sniff(raw: bytes) -> str | None:
    """Container format from magic bytes; the content decides, not the file name."""
    if len(raw) >= 132 and raw[128:132] == b"DICM":
        return "DICOM"
    if raw.startswith(_PNG_SIG):
        return "PNG"
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        return "WEBP"
    if raw.startswith(b"BM") and len(raw) >= 26:
        return "BMP"
    return None


def _looks_like_bare_dicom(raw: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble (old ACR-NEMA style files).

    It starts with a little-endian tag of group 0x0002 or 0x0008 followed by either an
    explicit two-letter VR or an implicit 4-byte length that fits in the file.
    """
    if len(raw) < 8 or raw[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = raw[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack("<I", raw[4:8])
    return length <= len(raw)


def _decode_bytes(raw: bytes, name: str | None, limits: DecodeLimits) -> DecodedImage:
    kind = _sniff(raw)
    if kind == "DICOM":
        return _decode_dicom(raw, forced=False, limits=limits)
    if kind is not None:
        return _decode_pillow(raw, kind, limits)
    named_dicom = bool(name) and name.lower().endswith(_DICOM_SUFFIXES)
    if named_dicom or _looks_like_bare_dicom(raw):
        return _decode_dicom(raw, forced=True, limits=limits)
    if _looks_like_text(raw):
        raise ImageDecodeError(
            "not_an_image",
            "This file contains text, not an image. Supported: PNG, JPEG, BMP, TIFF, GIF, WebP and DICOM.",
        )
    raise ImageDecodeError("not_an_image")


def _looks_like_text(raw: bytes) -> bool:
    head = raw[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


# ----------------------------------------------------------------------------- shared helpers


def _check_header_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Reject bombs and thumbnails from the declared size, before decoding pixels."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", "The image header declares an empty image.")
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"The image declares {width} × {height} pixels "
            f"({width * height / 1e6:.1f} MP); the limit is {limits.max_pixels / 1e6:.1f} MP.",
        )
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(
            "too_small",
            f"The image is {width} × {height} pixels; a chest X-ray needs at least "
            f"{limits.min_side} pixels on each side.",
        )


def _finish(
    gray: np.ndarray,
    fmt: str,
    original_shape: tuple[int, int],
    bit_depth: int,
    notices: list[str],
    limits: DecodeLimits,
) -> DecodedImage:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ImageDecodeError("corrupt", detail=f"internal: got {gray.dtype} {gray.shape}")
    h, w = gray.shape
    # Re-check: some decoders report a header size different from what they produce.
    _check_header_size(w, h, limits)
    return DecodedImage(
        array=np.ascontiguousarray(gray),
        format=fmt,
        original_shape=(int(original_shape[0]), int(original_shape[1])),
        bit_depth=int(bit_depth),
        notices=tuple(notices),
    )


def _linear_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto ``[0, 255]``, clipping outside; NaN becomes 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        # A lookup table over every possible value: exact, fast, and no float copy of
        # a large image. The table is indexed by the unsigned view of the bits.
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        bits = 8 * arr.dtype.itemsize
        utype = np.dtype(f"uint{bits}")
        values = np.arange(2**bits, dtype=utype).view(arr.dtype).astype(np.float64)
        lut = _scale(values, lo, hi)
        return lut[arr.view(utype)]
    return _scale(arr.astype(np.float64, copy=False), lo, hi)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    # One float64 temporary, updated in place: a 9-MP film needs 72 MB, not 300.
    with np.errstate(all="ignore"):
        out = np.clip(values, lo, hi)
        out -= lo
        out *= 255.0 / (hi - lo)
        np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(out, 0.0, 255.0, out=out)
        np.rint(out, out=out)
        return out.astype(np.uint8)


#: Percentiles of the automatic window for images deeper than 8 bits.
AUTO_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def _auto_window(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """Scale a deep or float image to 8 bits with a robust percentile window."""
    if arr.dtype == np.uint8:
        return arr, ""
    # Percentiles from a strided sample of at most ~1 MP keep this fast on 9-MP films.
    step = max(1, int(np.sqrt(arr.size / 1_000_000)))
    sample = np.asarray(arr[::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8), "The image has no finite pixel values; shown black."
    lo, hi = (float(v) for v in np.percentile(sample, AUTO_WINDOW_PERCENTILES))
    how = f"{AUTO_WINDOW_PERCENTILES[0]:g}–{AUTO_WINDOW_PERCENTILES[1]:g} percentile window"
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
        how = "min–max window"
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.uint8), "The image is a single flat value; shown black."
    return _linear_to_uint8(arr, lo, hi), f"Scaled to 8 bits with a {how}."


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (what Pillow's ``convert("L")`` uses), in float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# ----------------------------------------------------------------------------- Pillow path

#: Pillow plugins allowed to open a file. Restricting them stops lenient plugins (TGA,
#: raw formats without magic bytes) from "decoding" random bytes into noise. (Multi-picture
#: JPEGs open through the JPEG factory and report "MPO".)
_PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP")
_REPORTED_FORMAT = {"MPO": "JPEG", "DIB": "BMP"}
_ORIENTATION_TEXT = {
    2: "mirrored horizontally",
    3: "rotated 180°",
    4: "mirrored vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}


def _frames_notice(im: Image.Image, fmt: str) -> str:
    """Say that only the first frame is shown, counting frames only where that is cheap.

    PNG (acTL) and WebP store the frame count in the header. GIF and TIFF have to be
    walked frame by frame, which a crafted 64 MB file can make take minutes, so for
    them only "more than one" is established (one step).
    """
    if not getattr(im, "is_animated", False):
        return ""
    if fmt in ("PNG", "WEBP"):
        return f"Animated {fmt}: showing frame 1 of {int(im.n_frames)}."  # type: ignore[attr-defined]
    if fmt == "TIFF":
        return "Multi-page TIFF: showing the first page."
    return f"Animated {fmt}: showing the first frame."


def _pil_failure(exc: BaseException, kind: str, raw: bytes, stage: str) -> ImageDecodeError:
    """Turn a Pillow exception into a typed error with a specific human message."""
    from PIL.Image import DecompressionBombError, DecompressionBombWarning

    detail = f"{stage}: {type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, (DecompressionBombError, DecompressionBombWarning)):
        return ImageDecodeError(
            "too_large", "The image declares too many pixels to open safely.", detail=detail
        )
    if isinstance(exc, MemoryError):
        return ImageDecodeError("too_large", "There is not enough memory to decode this image.")
    text = str(exc).lower()
    if (
        "truncated" in text
        or isinstance(exc, EOFError)
        or "end of file" in text
        or (isinstance(exc, UnidentifiedImageError) and len(raw) < 64)
    ):
        return ImageDecodeError(
            "truncated",
            f"The {kind} file is incomplete (it ends before the image data does). "
            "Try exporting or uploading it again.",
            detail=detail,
        )
    if "unsupported" in text or "not supported" in text or "unknown raw mode" in text:
        return ImageDecodeError(
            "unsupported", f"This {kind} file uses an encoding CXR Lens cannot decode.", detail=detail
        )
    return ImageDecodeError(
        "corrupt",
        f"The file starts like a {kind} image but its data is damaged and could not be decoded.",
        detail=detail,
    )


def _decode_pillow(raw: bytes, kind: str, limits: DecodeLimits) -> DecodedImage:
    from PIL.Image import DecompressionBombError, DecompressionBombWarning

    try:
        im = Image.open(io.BytesIO(raw), formats=list(_PIL_FORMATS))
    except (DecompressionBombError, DecompressionBombWarning) as exc:
        # The Warning only arrives as an exception when warnings are errors (-W error);
        # our own max_pixels check below covers the normal case without touching the
        # process-wide warning filters, which Streamlit's threads share.
        raise _pil_failure(exc, kind, raw, "open") from exc
    except Exception as exc:
        if kind == "TIFF":
            return _decode_tifffile(raw, limits, exc)
        raise _pil_failure(exc, kind, raw, "open") from exc

    with im:
        fmt = _REPORTED_FORMAT.get(im.format or kind, im.format or kind)
        width, height = im.size
        _check_header_size(width, height, limits)
        notices: list[str] = []
        try:
            frames_notice = _frames_notice(im, fmt)
            if frames_notice:
                im.seek(0)
                notices.append(frames_notice)
            im.load()
        except (DecompressionBombError, DecompressionBombWarning, MemoryError) as exc:
            raise _pil_failure(exc, fmt, raw, "load") from exc
        except Exception as exc:
            if kind == "TIFF":
                return _decode_tifffile(raw, limits, exc)
            raise _pil_failure(exc, fmt, raw, "load") from exc

        bit_depth = _pil_bit_depth(im, raw, fmt)
        if fmt == "PNG" and bit_depth == 16 and not im.mode.startswith(("I", "F")):
            # Pillow keeps only the high byte of 16-bit colour / grey+alpha PNGs, which
            # turns 12-bit data stored in 16 bits nearly black; OpenCV reads all 16 bits.
            deep = _png16_colour_to_gray(raw, (height, width))
            if deep is not None:
                gray, convert_notice = deep
                gray = _orient_array(im, gray, notices)
                notices.append(convert_notice)
                return _finish(gray, fmt, gray.shape, bit_depth, notices, limits)
        im = _apply_exif_orientation(im, notices)
        try:
            gray, convert_notice = _pil_to_gray(im)
        except Exception as exc:
            raise _pil_failure(exc, fmt, raw, "convert") from exc
        if convert_notice:
            notices.append(convert_notice)
        return _finish(gray, fmt, gray.shape, bit_depth, notices, limits)


def _png16_colour_to_gray(raw: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, str] | None:
    """Full-depth decode of a 16-bit RGB(A) / grey+alpha PNG; None to fall back to Pillow.

    Only called after the header passed the size limits, so OpenCV (installed with
    grad-cam) never sees a bomb.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv comes with grad-cam
        return None
    arr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.shape[:2] != shape:
        return None
    notes = []
    if arr.ndim == 2:
        values = arr.astype(np.float64)
    else:
        bgr = arr[..., :3].astype(np.float64)
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])):
            notes.append("Colour image converted to grayscale.")
        values = _rgb_to_gray(bgr[..., ::-1])
        if arr.shape[-1] == 4:
            alpha = arr[..., 3]
            if (alpha < 65535).any():
                values *= alpha / 65535.0
                notes.append("Transparent areas were composited over black.")
    gray, window = _auto_window(values)
    return gray, " ".join([*notes, window]).strip()


def _orient_array(im: Image.Image, gray: np.ndarray, notices: list[str]) -> np.ndarray:
    """Apply the EXIF orientation of ``im`` to an array decoded by another library."""
    oriented = _apply_exif_orientation(_with_exif_of(im, gray), notices)
    return np.asarray(oriented, dtype=np.uint8)


def _with_exif_of(im: Image.Image, gray: np.ndarray) -> Image.Image:
    out = Image.fromarray(gray)
    try:
        out.info["exif"] = im.getexif().tobytes()
    except Exception:  # unreadable EXIF: _apply_exif_orientation reports nothing to apply
        pass
    return out


def _pil_bit_depth(im: Image.Image, raw: bytes, fmt: str) -> int:
    """Bits per sample as stored, where the container says; else from the mode."""
    try:
        if fmt == "PNG" and raw[12:16] == b"IHDR":
            return int(raw[24])
        if fmt == "JPEG" and getattr(im, "bits", None):
            return int(im.bits)  # type: ignore[attr-defined]
        if fmt == "TIFF":
            bps = im.tag_v2.get(258)  # type: ignore[attr-defined]
            if bps:
                return int(bps[0] if isinstance(bps, tuple) else bps)
    except Exception:  # a bit depth is informative only; never fail a decode over it
        pass
    mode = im.mode
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def _apply_exif_orientation(im: Image.Image, notices: list[str]) -> Image.Image:
    try:
        orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except Exception:
        notices.append("The EXIF metadata is unreadable; orientation was not applied.")
        return im
    if orientation not in _ORIENTATION_TEXT:
        return im
    try:
        turned = ImageOps.exif_transpose(im)
    except Exception:
        notices.append("The EXIF orientation could not be applied.")
        return im
    notices.append(f"EXIF orientation applied ({_ORIENTATION_TEXT[orientation]}).")
    return turned if turned is not None else im


def _pil_to_gray(im: Image.Image) -> tuple[np.ndarray, str]:
    """Any Pillow mode → (H, W) uint8 plus a notice describing a lossy conversion."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8), ""
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise ValueError(f"unexpected array shape {arr.shape} for mode {mode}")
        return _auto_window(arr)
    has_alpha = "A" in mode or "a" in mode or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3].astype(np.float64) / 255.0
        gray = _rgb_to_gray(rgba[..., :3]) * alpha
        parts = []
        if mode not in ("LA", "La") and not _is_grey_rgb(rgba[..., :3]):
            parts.append("Colour image converted to grayscale.")
        if bool((rgba[..., 3] < 255).any()):
            parts.append("Transparent areas were composited over black.")
        return np.rint(np.clip(gray, 0, 255)).astype(np.uint8), " ".join(parts)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8), ""
    rgb_im = im if mode == "RGB" else im.convert("RGB")
    rgb = np.asarray(rgb_im)
    grey_already = _is_grey_rgb(rgb)
    gray = np.asarray(rgb_im.convert("L"), dtype=np.uint8)
    return gray, "" if grey_already else "Colour image converted to grayscale."


def _is_grey_rgb(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _decode_tifffile(raw: bytes, limits: DecodeLimits, pil_exc: BaseException) -> DecodedImage:
    """Fallback for TIFFs Pillow cannot read (e.g. 12-bit, odd sample formats)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile comes with scikit-image
        raise _pil_failure(pil_exc, "TIFF", raw, "open") from pil_exc
    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            if not tif.pages:
                raise ValueError("no pages")
            page = tif.pages.first
            shape = tuple(int(s) for s in page.shape)
            axes = page.axes
            n_pages = len(tif.pages)
            height = shape[axes.index("Y")] if "Y" in axes else 0
            width = shape[axes.index("X")] if "X" in axes else 0
            _check_header_size(width, height, limits)
            arr = page.asarray()
            bits = int(page.bitspersample)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise _pil_failure(pil_exc, "TIFF", raw, f"open (tifffile: {type(exc).__name__})") from exc
    arr = np.squeeze(arr)
    notices = [f"Multi-page TIFF: showing page 1 of {n_pages}."] if n_pages > 1 else []
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = _rgb_to_gray(arr[..., :3])
        notices.append("Colour image converted to grayscale.")
    if arr.ndim != 2:
        raise ImageDecodeError(
            "unsupported", "This TIFF layout (more than one image plane) is not supported."
        )
    gray, notice = _auto_window(arr)
    if notice:
        notices.append(notice)
    return _finish(gray, "TIFF", (height, width), bits, notices, limits)


# ----------------------------------------------------------------------------- DICOM path


def _decode_dicom(raw: bytes, *, forced: bool, limits: DecodeLimits) -> DecodedImage:
    """Decode a DICOM file; errors leave without the chained frames holding the dataset."""
    failure: ImageDecodeError
    try:
        return _decode_dicom_inner(raw, forced=forced, limits=limits)
    except ImageDecodeError as exc:
        failure = exc
    except MemoryError:
        failure = ImageDecodeError("too_large", "There is not enough memory to decode this DICOM image.")
    except Exception as exc:
        # Only the type name: pydicom messages may quote header values.
        failure = ImageDecodeError(
            "corrupt",
            "The DICOM file is damaged or malformed and its image could not be decoded.",
            detail=f"dicom: {type(exc).__name__}",
        )
    failure.__cause__ = None
    failure.__context__ = None
    raise failure.with_traceback(None)


def _decode_dicom_inner(raw: bytes, *, forced: bool, limits: DecodeLimits) -> DecodedImage:
    ds = _read_dicom(raw, forced)
    _require_pixel_data(ds, forced)
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError("corrupt", "The DICOM header does not say how large the image is.")
    _check_header_size(cols, rows, limits)
    tsyntax, ts_name = _dicom_transfer_syntax(ds)

    notices: list[str] = []
    n_frames = _dicom_frame_count(ds)
    if n_frames > 1:
        notices.append(f"Multi-frame DICOM: showing frame 1 of {n_frames}.")
    arr = _dicom_first_frame(ds, tsyntax, ts_name)
    bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or arr.dtype.itemsize * 8)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = _dicom_colour_to_gray(arr, notices)
        return _finish(gray, "DICOM", (rows, cols), bits_stored, [n for n in notices if n], limits)
    if arr.ndim != 2:
        raise ImageDecodeError("unsupported", "This DICOM pixel layout is not supported.")
    gray = _dicom_display(arr, ds, notices)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores bone dark; radiologists and the model expect bone bright.
        gray = 255 - gray
        notices.append("MONOCHROME1 image inverted so that bone is bright.")
    return _finish(gray, "DICOM", (rows, cols), bits_stored, notices, limits)


# pydicom is imported inside the DICOM helpers: most uploads are not DICOM, and the import is slow.


def _read_dicom(raw: bytes, forced: bool) -> Any:
    """Parse the file (``forced``: the name said DICOM but the preamble is missing)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(raw), force=forced)
    except (InvalidDicomError, EOFError, struct.error, OverflowError) as exc:
        if forced:
            raise ImageDecodeError(
                "not_an_image", "This file is named like DICOM but is not a readable DICOM file."
            ) from exc
        raise ImageDecodeError("corrupt", "The DICOM file is damaged or incomplete.") from exc


def _require_pixel_data(ds: Any, forced: bool) -> None:
    """Raise unless ``ds`` carries an image, telling garbage apart from a DICOM object without one."""
    if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return
    if not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID", "SeriesInstanceUID")):
        # Nothing DICOM-like was parsed: garbage, not a DICOM object without an image.
        if forced:
            raise ImageDecodeError(
                "not_an_image", "This file is named like DICOM but is not a readable DICOM file."
            )
        raise ImageDecodeError("corrupt", "The DICOM file is damaged: its header could not be read.")
    raise ImageDecodeError(
        "no_pixel_data",
        "This DICOM file contains no image (no pixel data): it may be a report, "
        "a structured document or a series index rather than an X-ray.",
    )


def _dicom_transfer_syntax(ds: Any) -> tuple[Any, str]:
    """(transfer syntax UID, its name) of ``ds``, once a decoder for it is known to be installed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    # pydicom needs a transfer syntax to pick a decoder; bare files only tell us how
    # they were encoded.
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    tsyntax = UID(str(meta.TransferSyntaxUID))
    ts_name = tsyntax.name if tsyntax.is_transfer_syntax else "an unknown transfer syntax"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageDecodeError(
            "unsupported", f"DICOM images encoded with {ts_name} are not supported."
        ) from None
    if not decoder.is_available:
        raise ImageDecodeError(
            "unsupported",
            f"DICOM images encoded with {ts_name} need a decoder plugin that is not installed.",
        )
    return tsyntax, ts_name


def _dicom_first_frame(ds: Any, tsyntax: Any, ts_name: str) -> np.ndarray:
    """The stored values of frame 1 (decompressed when the transfer syntax is compressed)."""
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=0)
    except (NotImplementedError, RuntimeError) as exc:
        if tsyntax.is_compressed:
            raise ImageDecodeError(
                "corrupt", f"The DICOM image data ({ts_name}) could not be decompressed."
            ) from exc
        raise
    return np.asarray(arr)


def _dicom_colour_to_gray(arr: np.ndarray, notices: list[str]) -> np.ndarray:
    luma = _rgb_to_gray(arr[..., :3])
    if arr.dtype == np.uint8:
        gray = np.rint(np.clip(luma, 0, 255)).astype(np.uint8)
    else:
        gray, notice = _auto_window(luma)
        notices.append(notice)
    notices.append("Colour DICOM converted to grayscale.")
    return gray


def _dicom_display(arr: np.ndarray, ds: Any, notices: list[str]) -> np.ndarray:
    """Stored values → 8-bit display: the Modality LUT, then the file's VOI or a default window."""
    from pydicom.pixels import apply_modality_lut

    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        # Stored values of at most 16 bits: run the Modality and VOI LUTs once over every
        # possible value and index the image with the result. Exact, and ~10x faster
        # than pushing a 9-MP film through float64 rescale and windowing.
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        utype = np.dtype(f"uint{8 * arr.dtype.itemsize}")
        probe = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=utype).view(arr.dtype)
        mapped = apply_modality_lut(probe, ds)
        lut = _dicom_voi(np.asarray(mapped), ds, notices)
        if lut is not None:
            return lut[arr.view(utype)]
        return _dicom_default_window(np.asarray(mapped)[arr.view(utype)], ds, notices)
    values = np.asarray(apply_modality_lut(arr, ds))
    gray = _dicom_voi(values, ds, notices)
    if gray is None:
        gray = _dicom_default_window(values, ds, notices)
    return gray


def _dicom_frame_count(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _dicom_voi(values: np.ndarray, ds: Any, notices: list[str]) -> np.ndarray | None:
    """Apply the stored VOI LUT or window and map its output range onto 0–255.

    Returns None when the file has no VOI, or when the stored one is unusable (e.g. a
    zero width, with a notice): the caller then uses a default window, so a bad header
    degrades the display rather than rejecting the study.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    has_lut = bool(ds.get("VOILUTSequence")) and all(
        ds.VOILUTSequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_lut:
            item = ds.VOILUTSequence[0]
            nr_entries = int(item.LUTDescriptor[0]) or 2**16
            first_map = int(item.LUTDescriptor[1])
            # The LUT's own min/max, not its declared bit depth: many files declare 16
            # bits and use 12.
            probe = np.arange(first_map, first_map + nr_entries, dtype=np.int64)
            table = apply_voi(probe, ds)
            lo, hi = float(np.min(table)), float(np.max(table))
            out = apply_voi(values, ds)
            if hi > lo:
                notices.append("DICOM VOI LUT applied.")
                return _linear_to_uint8(np.asarray(out), lo, hi)
        elif has_window:
            # Probing with extreme inputs yields the window's output range (y_min, y_max)
            # whatever rescale or LUT pydicom took into account.
            with np.errstate(all="ignore"):
                ends = apply_windowing(np.array([-1e300, 1e300]), ds)
                out = apply_windowing(np.asarray(values), ds)
            lo, hi = float(ends[0]), float(ends[1])
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                notices.append(_window_notice(ds))
                return _linear_to_uint8(np.asarray(out), lo, hi)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError, OverflowError):
        notices.append("The DICOM display window is invalid; an automatic window was used instead.")
    return None


def _dicom_default_window(values: np.ndarray, ds: Any, notices: list[str]) -> np.ndarray:
    """The display mapping for a DICOM image without a usable VOI LUT or window."""
    if values.dtype.kind in "ui" and values.dtype.itemsize == 1:
        # 1- to 8-bit data without a window: use its nominal range, as a viewer would,
        # so 1-bit masks become 0/255 and 8-bit images stay exact.
        bits = min(max(int(ds.get("BitsStored", 8) or 8), 1), 8)
        lo, hi = (0, 2**bits - 1) if values.dtype.kind == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return _linear_to_uint8(values, lo, hi)
    gray, notice = _auto_window(values)
    if notice:
        notices.append(notice)
    return gray


def _window_notice(ds: Any) -> str:
    try:
        c = ds["WindowCenter"].value
        w = ds["WindowWidth"].value
        c = c[0] if ds["WindowCenter"].VM > 1 else c
        w = w[0] if ds["WindowWidth"].VM > 1 else w
        return f"DICOM window applied (centre {float(c):g}, width {float(w):g})."
    except Exception:
        return "DICOM window applied."


def sniff_format(head: bytes) -> str | None:
    """The image container a file's first bytes announce (PNG, JPEG, DICOM...), None for anything else.

    A cheap check for dataset readers: a file that is not an image at all is skipped and listed
    without decoding every file twice.
    """
    return _sniff(head) or ("DICOM" if _looks_like_bare_dicom(head) else None)


# --- film-level grey operations (issue 14: "why the test normals fail") ------------------------------------------
# ``preprocess.prepare`` applies them, before CLAHE, crop and resize, when the card's ``InputSpec`` asks for them.


def mask_letters(gray: np.ndarray, ground_size: float = 0.06, ratio: float = 0.25, min_grey: int = 160,
                 max_area: float = 0.006, max_side: float = 0.12, centre: tuple[float, float] = (0.12, 0.88)) -> np.ndarray:
    """Burnt-in letters and markers painted over with the film's ground around them.

    The ground is a grey opening wider than a letter's strokes (``ground_size`` of the shorter side). A mark is a
    connected set of pixels at least ``min_grey`` whose ground is at most ``ratio`` of their grey (bright print on the
    dark margin; ribs and bone on soft tissue fail it), no larger than ``max_area`` of the film nor longer than
    ``max_side`` of its shorter side, and centred outside the film's central box (``centre``, as fractions: where the
    lungs are). Marks, grown by 1 % of the shorter side, take the ground's grey."""
    from scipy import ndimage

    h, w = gray.shape
    k = max(3, round(ground_size * min(h, w)) | 1)
    ground = ndimage.grey_opening(gray, size=(k, k))
    labels, n = ndimage.label((gray >= min_grey) & (ground <= ratio * gray.astype(np.float32)), structure=np.ones((3, 3), bool))
    if n == 0:
        return gray
    keep = np.bincount(labels.ravel(), minlength=n + 1) <= max_area * h * w
    keep[0] = False
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        cy, cx = (ys.start + ys.stop) / (2 * h), (xs.start + xs.stop) / (2 * w)
        central = centre[0] < cy < centre[1] and centre[0] < cx < centre[1]
        keep[i] &= max(ys.stop - ys.start, xs.stop - xs.start) <= max_side * min(h, w) and not central
    marks = ndimage.binary_dilation(keep[labels], iterations=max(1, round(0.01 * min(h, w))))
    out = gray.copy()
    out[marks] = ground[marks]
    return out


def mask_border(gray: np.ndarray, fraction: float) -> np.ndarray:
    """The outer ``fraction`` of each side replaced by the film's edge just inside it (edge replication): film
    borders, scanner lines and labels in the margin carry nothing, and no artificial frame is drawn."""
    h, w = gray.shape
    bh, bw = min(round(fraction * h), (h - 1) // 2), min(round(fraction * w), (w - 1) // 2)
    if bh <= 0 and bw <= 0:
        return gray
    inner = gray[bh : h - bh, bw : w - bw]
    return np.pad(inner, ((bh, bh), (bw, bw)), mode="edge")


def histogram_quantiles(hist: np.ndarray, k: int = 33) -> tuple[float, ...]:
    """The grey values at ``k`` evenly spaced levels 0..1 of a 256-bin histogram (rounded to 0.01)."""
    h = np.asarray(hist, np.float64) + 1e-9  # strictly increasing cumulative curve
    edges = np.concatenate([[0.0], np.cumsum(h) / h.sum()])
    return tuple(round(float(v), 2) for v in np.interp(np.linspace(0.0, 1.0, k), edges, np.arange(257.0)))


def mean_histogram(images: Any) -> np.ndarray:
    """The mean of the films' normalised 256-bin grey histograms (each film weighs the same)."""
    total, n = np.zeros(256), 0
    for img in images:
        c = np.bincount(np.asarray(img, np.uint8).ravel(), minlength=256)
        total += c / c.sum()
        n += 1
    if n == 0:
        raise ValueError("no images for a mean histogram")
    return total / n


def histogram_reference(films: Any) -> tuple[float, ...]:
    """An ``InputSpec.hist_ref``: the quantiles of the films' mean histogram (give it training films only)."""
    return histogram_quantiles(mean_histogram(films))


def match_histogram(gray: np.ndarray, quantiles: tuple[float, ...] | list[float]) -> np.ndarray:
    """Grey levels mapped so that the film's histogram follows the reference ``quantiles`` (``histogram_quantiles``)."""
    q = np.asarray(quantiles, np.float64)
    if q.ndim != 1 or len(q) < 2:
        raise ValueError("histogram matching needs at least two reference quantiles")
    c = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    mid = (np.cumsum(c) - c / 2) / c.sum()  # each grey level's mid-rank in the film
    lut = np.clip(np.interp(mid, np.linspace(0.0, 1.0, len(q)), q) + 0.5, 0, 255).astype(np.uint8)
    return lut[gray]


def film_options(gray: np.ndarray, *, letters: bool = False, border: float = 0.0,
                 hist_ref: tuple[float, ...] = ()) -> np.ndarray:
    """The film-level options of an ``InputSpec`` in their fixed order: letters, border, then histogram matching."""
    if letters:
        gray = mask_letters(gray)
    if border > 0:
        gray = mask_border(gray, border)
    if hist_ref:
        gray = match_histogram(gray, hist_ref)
    return np.ascontiguousarray(gray)
