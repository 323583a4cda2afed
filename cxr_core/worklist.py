"""A radiologist's worklist: many uploads (loose files, zip archives) → one row per study, in batches.

:func:`expand_uploads` turns what the uploader received into :class:`StudyFile` items (a zip is
opened in memory, member by member, within :class:`WorklistLimits`); :class:`WorklistProcessor`
decodes them, runs both classifiers, one healthy-only anomaly detector and the chest X-ray guard
over ``batch_size`` studies at a time and yields a :class:`StudyRow` per study as each batch
finishes, so that a page can fill its table and progress bar as it goes. A file that cannot be read
gets a row that says why; the others go on.

Nothing here writes to disk or logs a file's content, and nothing read from a DICOM header
reaches a row: the decoder returns pixels, format and numbers only (``cxr_core.imaging``).
"""

from __future__ import annotations

import csv
import io
import math
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import DecodeLimits
from .imaging import DecodedImage, ImageDecodeError, decode_image

__all__ = [
    "COLUMNS",
    "StudyFile",
    "StudyRow",
    "WorklistLimits",
    "WorklistProcessor",
    "check_batch",
    "expand_uploads",
    "filter_rows",
    "rows_to_csv",
    "sort_rows",
]


@dataclass(frozen=True)
class WorklistLimits:
    """Bounds on what one worklist accepts (a zip bomb or a folder of 10,000 files is refused in words)."""

    #: Studies in one worklist, archives' members included.
    max_studies: int = 500
    #: Members read from one zip archive (directories and hidden files are not counted).
    max_zip_members: int = 1000
    #: Uncompressed bytes read from one archive, all members together.
    max_zip_bytes: int = 2 * 1024**3
    #: Per-file limits (each member is also held to ``decode.max_bytes``).
    decode: DecodeLimits = field(default_factory=DecodeLimits)


@dataclass(frozen=True, eq=False)
class StudyFile:
    """One study to process: its display name and bytes (in memory), or why it could not be taken."""

    name: str
    #: The file's bytes; left out of ``repr`` (a DICOM's header is in them: never print or log it).
    data: bytes = field(repr=False)
    #: Set when the file never reaches the decoder (e.g. a zip member that is encrypted or too big).
    error: str | None = None


#: Table columns in display order: (StudyRow attribute, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("index", "#"),
    ("file", "File"),
    ("format", "Format"),
    ("p_pneumonia", "P(pneumonia)"),
    ("binary_label", "Normal vs pneumonia"),
    ("label3", "3-class label"),
    ("prob3", "3-class probability"),
    ("anomaly", "Anomaly score"),
    ("anomaly_flag", "Anomaly flag"),
    ("guard", "Chest X-ray check"),
    ("status", "Status"),
)


@dataclass
class StudyRow:
    """What the worklist table shows for one study (no pixels, no header text)."""

    index: int
    file: str
    format: str | None = None
    p_pneumonia: float | None = None
    binary_label: str | None = None
    label3: str | None = None
    prob3: float | None = None
    anomaly: float | None = None
    anomaly_threshold: float | None = None
    anomaly_flag: bool | None = None
    #: "looks like a chest X-ray", "NOT a chest X-ray: <reasons>" or "not checked".
    guard: str = "not checked"
    guard_ok: bool | None = None
    #: "ok", or a sentence saying why the study could not be processed.
    status: str = "ok"
    width: int | None = None
    height: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- uploads → study files


def _hidden(name: str) -> bool:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].upper() == "DICOMDIR"


def _is_zip(name: str, data: bytes) -> bool:
    """A zip archive named ``.zip`` or without an extension (an Office document is a zip too: not opened)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    named = base.endswith(".zip") or "." not in base
    return named and data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _printable(name: str, limit: int = 120) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in name)
    text = " ".join(text.split()) or "upload"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expand_zip(name: str, data: bytes, limits: WorklistLimits) -> list[StudyFile]:
    """The members of one archive, read in memory; an unreadable archive becomes one error row."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir() and not _hidden(i.filename)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        return [StudyFile(name, b"", f"The zip archive is damaged and could not be opened ({type(e).__name__}).")]
    if not infos:
        return [StudyFile(name, b"", "The zip archive contains no files.")]
    out: list[StudyFile] = []
    total = 0
    for n, info in enumerate(infos):
        shown = _printable(f"{name}/{info.filename}")
        if n >= limits.max_zip_members:
            out.append(StudyFile(_printable(name), b"", f"Only the first {limits.max_zip_members} files of the archive "
                                 f"were read; {len(infos) - n} more were left out."))
            break
        if info.flag_bits & 0x1:
            out.append(StudyFile(shown, b"", "This archive member is encrypted and cannot be read."))
            continue
        if info.file_size > limits.decode.max_bytes:
            out.append(StudyFile(shown, b"", f"The file is too large to open safely ({info.file_size / 2**20:.0f} MiB; "
                                 f"the limit is {limits.decode.max_bytes / 2**20:.0f} MiB)."))
            continue
        if total + info.file_size > limits.max_zip_bytes:
            out.append(StudyFile(shown, b"", "The archive expands to more than the worklist accepts; "
                                 "the remaining members were left out."))
            break
        try:
            with zf.open(info) as fh:
                # Never trust the declared size: read at most one byte past it.
                member = fh.read(min(info.file_size, limits.decode.max_bytes) + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
            out.append(StudyFile(shown, b"", f"This archive member could not be extracted ({type(e).__name__})."))
            continue
        if len(member) > info.file_size:
            out.append(StudyFile(shown, b"", "This archive member is larger than its header says; it was not read."))
            continue
        total += len(member)
        if _is_zip(info.filename, member):
            out.append(StudyFile(shown, b"", "A zip archive inside a zip archive is not opened; upload it on its own."))
            continue
        out.append(StudyFile(shown, member))
    return out


def expand_uploads(files: Iterable[tuple[str, bytes]], limits: WorklistLimits | None = None) -> list[StudyFile]:
    """``(name, bytes)`` uploads → study files, zip archives opened in memory; at most ``max_studies``.

    Directories, hidden files (``.DS_Store``, ``__MACOSX/``) and ``DICOMDIR`` index files inside an
    archive are skipped. A file beyond ``max_studies`` is not read; the last item says so.
    """
    limits = limits or WorklistLimits()
    out: list[StudyFile] = []
    for name, data in files:
        shown = _printable(name)
        items = _expand_zip(shown, data, limits) if _is_zip(shown, data) else [StudyFile(shown, data)]
        for item in items:
            if len(out) >= limits.max_studies:
                out.append(StudyFile("(more files)", b"", f"The worklist takes at most {limits.max_studies} studies; "
                                     "the remaining files were left out."))
                return out
            out.append(item)
    return out


# --------------------------------------------------------------------------- processing


def check_batch(guard: Any, decoded: Sequence[DecodedImage], raws: Sequence[bytes | None]) -> list[Any]:
    """The chest X-ray guard's verdict for many images: cheap checks per image, one batched feature pass.

    Same verdicts as ``OODGuard.check`` image by image (``cxr_core.ood``); ``guard`` None: the
    cheap colour and shape checks only.
    """
    from .ood import cheap_check
    from .preprocess import prepare

    results = [cheap_check(d.array, original_shape=d.original_shape, raw=r) for d, r in zip(decoded, raws, strict=True)]
    if guard is None or not decoded:
        return results
    from .anomaly import shared_backbone

    spec = shared_backbone(guard.detector.cfg.architecture).spec(guard.detector.cfg.size)
    dist = guard.distances(np.stack([prepare(d.array, spec) for d in decoded]))
    for res, d in zip(results, dist, strict=True):
        d = float(d)
        res.distance, res.threshold = d, guard.threshold
        if not d < guard.threshold:  # NaN counts as unlike
            res.looks_like_cxr = False
            res.reasons.append(f"its image features are {d / guard.threshold:.1f}× the distance at which the guard flags "
                               "(fitted on the training chest X-rays)")
    return results


@dataclass
class WorklistTimings:
    """Seconds spent per stage over a whole worklist."""

    decode: float = 0.0
    classify: float = 0.0
    anomaly: float = 0.0
    guard: float = 0.0

    @property
    def total(self) -> float:
        return self.decode + self.classify + self.anomaly + self.guard


class WorklistProcessor:
    """Runs a worklist's studies through the registry's models, ``batch_size`` at a time.

    ``predictor``: a ``cxr_core.predict.Predictor``; ``detector``: a ``LoadedDetector`` (or None);
    ``guard``: an ``OODGuard`` (or None: cheap checks only).
    """

    def __init__(self, predictor: Any, detector: Any | None = None, guard: Any | None = None, *,
                 batch_size: int = 16, limits: DecodeLimits | None = None) -> None:
        self.predictor = predictor
        self.detector = detector
        self.guard = guard
        self.batch_size = max(1, int(batch_size))
        self.limits = limits or DecodeLimits()
        self.timings = WorklistTimings()

    def _decode(self, item: StudyFile, row: StudyRow) -> DecodedImage | None:
        if item.error:
            row.status = item.error
            return None
        try:
            decoded = decode_image(item.data, filename=item.name, limits=self.limits)
        except ImageDecodeError as e:
            row.status = e.message
            return None
        except Exception as e:  # decode_image promises ImageDecodeError only; a row must say something regardless
            row.status = f"It could not be decoded ({type(e).__name__})."
            return None
        row.format = decoded.format
        row.height, row.width = decoded.original_shape
        return decoded

    def _fill(self, rows: list[StudyRow], decoded: list[DecodedImage], raws: list[bytes]) -> None:
        t0 = time.perf_counter()
        try:
            preds = self.predictor.predict_batch([d.array for d in decoded], batch_size=self.batch_size)
        except Exception as e:  # one failing batch marks its rows; the worklist goes on
            for row in rows:
                row.status = f"The models could not classify it ({type(e).__name__}: {str(e)[:200]})."
            return
        t1 = time.perf_counter()
        for row, pred in zip(rows, preds, strict=True):
            # The class column shows the 3-class model, or the registry's other multi-class model (any labels).
            b = pred.results.get("binary")
            m = pred.results.get("multiclass") or next((r for t, r in pred.results.items() if t != "binary"), None)
            if b is not None:
                row.p_pneumonia = float(b.shown[1])  # calibrated, as the Predict page shows it
                row.binary_label = b.label
            if m is not None:
                row.label3, row.prob3 = m.label, float(m.confidence)
        if self.detector is not None:
            try:
                from .preprocess import prepare

                x = np.stack([prepare(d.array, self.detector.spec) for d in decoded])
                scores, _, _ = self.detector.score_prepared(x, want_maps=False)
                for row, s in zip(rows, scores, strict=True):
                    row.anomaly, row.anomaly_threshold = float(s), float(self.detector.threshold)
                    row.anomaly_flag = bool(s >= self.detector.threshold)
            except Exception:  # the score is optional: its cells stay empty and the worklist goes on
                for row in rows:
                    row.anomaly = row.anomaly_flag = None
        t2 = time.perf_counter()
        try:
            verdicts = check_batch(self.guard, decoded, raws)
        except Exception as e:  # the guard must never stop the worklist
            for row in rows:
                row.guard = f"check failed ({type(e).__name__})"
        else:
            for row, v in zip(rows, verdicts, strict=True):
                row.guard_ok = bool(v.looks_like_cxr)
                row.guard = "looks like a chest X-ray" if v.looks_like_cxr else "NOT a chest X-ray: " + "; ".join(v.reasons)
        t3 = time.perf_counter()
        self.timings.classify += t1 - t0
        self.timings.anomaly += t2 - t1
        self.timings.guard += t3 - t2

    def process(self, files: Sequence[StudyFile], start_index: int = 1) -> Iterator[list[StudyRow]]:
        """Yield the rows of each batch as it finishes (rows numbered from ``start_index``, in input order)."""
        for start in range(0, len(files), self.batch_size):
            chunk = files[start : start + self.batch_size]
            rows = [StudyRow(index=start_index + start + i, file=f.name) for i, f in enumerate(chunk)]
            t0 = time.perf_counter()
            good: list[tuple[StudyRow, DecodedImage, bytes]] = []
            for item, row in zip(chunk, rows, strict=True):
                d = self._decode(item, row)
                if d is not None:
                    good.append((row, d, item.data))
            self.timings.decode += time.perf_counter() - t0
            if good:
                self._fill([g[0] for g in good], [g[1] for g in good], [g[2] for g in good])
            yield rows

    def run(self, files: Sequence[StudyFile], progress: Callable[[int, int], None] | None = None) -> list[StudyRow]:
        """Every row at once (``progress(done, total)`` after each batch)."""
        out: list[StudyRow] = []
        for rows in self.process(files):
            out.extend(rows)
            if progress is not None:
                progress(len(out), len(files))
        return out


# --------------------------------------------------------------------------- table helpers


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0)  # missing values last, whichever the direction
    if isinstance(value, str):
        return (0, value.lower())
    return (0, value)


def sort_rows(rows: Sequence[StudyRow], column: str, descending: bool = False) -> list[StudyRow]:
    """Rows ordered by one ``StudyRow`` attribute; rows without a value come last in both directions."""
    if column not in StudyRow.__dataclass_fields__:
        raise ValueError(f"unknown worklist column {column!r}")
    present = [r for r in rows if _sort_key(getattr(r, column))[0] == 0]
    missing = [r for r in rows if _sort_key(getattr(r, column))[0] == 1]
    return sorted(present, key=lambda r: _sort_key(getattr(r, column)), reverse=descending) + missing


def filter_rows(
    rows: Sequence[StudyRow], *, text: str = "", statuses: Iterable[str] | None = None,
    labels: Iterable[str] | None = None, p_min: float = 0.0, p_max: float = 1.0,
    only_flagged: bool = False, only_not_cxr: bool = False,
) -> list[StudyRow]:
    """Rows matching every given condition.

    ``text``: substring of the file name (any case); ``statuses``: "ok" and/or "failed";
    ``labels``: 3-class labels (binary label when the registry has no 3-class model);
    ``p_min``/``p_max``: range of P(pneumonia) (rows without one pass only when the range is the
    full [0, 1]); ``only_flagged``: anomaly flag set; ``only_not_cxr``: the guard said not a chest X-ray.
    """
    text = text.strip().lower()
    statuses = set(statuses) if statuses is not None else None
    labels = set(labels) if labels is not None else None
    full = p_min <= 0.0 and p_max >= 1.0
    out = []
    for r in rows:
        if text and text not in r.file.lower():
            continue
        if statuses is not None and ("ok" if r.ok else "failed") not in statuses:
            continue
        if labels is not None and (r.label3 or r.binary_label) not in labels:
            continue
        if r.p_pneumonia is None:
            if not full:
                continue
        elif not p_min <= r.p_pneumonia <= p_max:
            continue
        if only_flagged and r.anomaly_flag is not True:
            continue
        if only_not_cxr and r.guard_ok is not False:
            continue
        out.append(r)
    return out


def _csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas (a file name such as ``=cmd()``) in text cells."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def rows_to_csv(rows: Sequence[StudyRow]) -> bytes:
    """The table as UTF-8 CSV, columns as :data:`COLUMNS` plus the anomaly threshold and image size."""
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = (("anomaly_threshold", "Anomaly threshold"), ("width", "Width"), ("height", "Height"))
    cols = COLUMNS + extra
    w.writerow([h for _, h in cols])
    for r in rows:
        values = []
        for attr, _ in cols:
            v = getattr(r, attr)
            if isinstance(v, float):
                v = f"{v:.6g}"
            elif v is None:
                v = ""
            values.append(_csv_safe(v))
        w.writerow(values)
    return buf.getvalue().encode("utf-8")
