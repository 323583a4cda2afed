"""Reading labelled chest X-ray datasets: the Kermany layout, any class folders, or a manifest.

Three layouts, recognised in this order (:func:`read_dataset`):

- **Kermany** (Kaggle ``chest-xray-pneumonia``): ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*``.
  The subtype (normal | bacteria | virus) and the patient id come from the file name
  (``personN_bacteria_M.jpeg``, ``IM-XXXX-YYYY.jpeg``...). It offers two tasks: ``binary``
  (NORMAL / PNEUMONIA) and ``multiclass`` (normal / bacteria / virus).
- **Manifest**: ``ROOT/manifest.csv`` with columns ``path,label`` and optionally
  ``patient_id`` and ``split``; paths are relative to ROOT.
- **Class folders** (torchvision's ImageFolder): ``ROOT/[train|val|test/]CLASS/**/*``, any
  class names; folders named ``mask``/``masks`` are skipped (the COVID-19 Radiography
  Database keeps lung masks beside the images).

Manifest and folder datasets offer one task, named after the dataset (or ``task=``), whose
classes are the label names, a class named normal first and the others sorted (:func:`class_order`). Patient ids come from the manifest, else from
Kermany-style file names, else each image is its own patient. Files that are not images are
skipped and listed in ``Dataset.skipped``.

Splits the dataset lacks (Kaggle's ``val/`` has 16 images, kermany-224 has none)
are made by patient from ``train/``, never by image, so that no patient's images
sit on both sides of a model-selection decision.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import SPLITS, TASK_CLASSES

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm")
LABELS = ("NORMAL", "PNEUMONIA")

_PNEUMONIA_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL_RE = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+", re.IGNORECASE)
#: Any finding in the Kermany naming scheme, e.g. ``person5001_covid_3`` (synthetic four-class sets).
_PERSON_RE = re.compile(r"^(person\d+)_[a-z]+_\d+", re.IGNORECASE)


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset. ``path`` is relative to the dataset root, POSIX style."""

    path: str
    split: str
    label: str  # Kermany: NORMAL | PNEUMONIA; other layouts: the class name
    subtype: str  # Kermany: normal | bacteria | virus; other layouts: the class name
    patient_id: str
    source_split: str = ""  # the folder it came from, before any re-splitting
    #: The class names of the dataset's own task (manifest and folder layouts; empty for Kermany).
    classes: tuple[str, ...] = ()

    def target(self, task: str) -> int:
        """Class index for ``task``: ``binary`` reads the Kermany label, every other task the subtype."""
        if task == "binary":
            return LABELS.index(self.label)
        classes = TASK_CLASSES.get(task) or self.classes
        if self.subtype not in classes:
            raise ValueError(f"{self.path}: class {self.subtype!r} is not one of task {task!r}'s classes {list(classes)}")
        return classes.index(self.subtype)


def parse_name(filename: str, label: str) -> tuple[str, str]:
    """Return ``(subtype, patient_id)`` for a dataset file name under ``label``.

    Names that follow neither pattern get their stem as patient id (one patient per
    image), and PNEUMONIA images without a subtype in the name get ``"bacteria"``
    only if the name says so — otherwise a ``DatasetError`` is raised, because a
    wrong subtype would silently poison the 3-class task.
    """
    stem = Path(filename).stem
    if label == "NORMAL":
        m = _NORMAL_RE.match(stem)
        return "normal", (m.group(1).upper() if m else stem)
    m = _PNEUMONIA_RE.match(stem)
    if not m:
        raise DatasetError(
            f"cannot read the pneumonia subtype from {filename!r}: expected personN_bacteria_M or personN_virus_M "
            "(a two-class set without subtypes: give its folders other class names, or list it in a manifest.csv)"
        )
    return m.group(2).lower(), m.group(1).lower()


@dataclass(frozen=True)
class Dataset:
    """A dataset root and its samples (in a stable, sorted order)."""

    root: Path
    samples: tuple[Sample, ...]
    name: str = ""
    layout: str = "kermany"  # "kermany", "manifest" or "folders"
    #: The task of a manifest or folder dataset (Kermany datasets offer ``TASK_CLASSES``).
    task: str = ""
    #: (path, reason) of every file found but not used.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def tasks(self) -> dict[str, tuple[str, ...]]:
        """Task name → class names, in the order of the model outputs."""
        if self.layout == "kermany":
            return dict(TASK_CLASSES)
        return {self.task: self.samples[0].classes if self.samples else ()}

    def classes(self, task: str) -> tuple[str, ...]:
        """The class names of ``task``; a clear error naming the tasks this dataset offers."""
        if task not in self.tasks:
            raise DatasetError(f"{self.root} ({self.layout} layout) offers the task(s) {sorted(self.tasks)}, not {task!r}")
        return self.tasks[task]

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {subtype: n}}`` for the dataset as it is now split."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            out.setdefault(s.split, Counter())[s.subtype] += 1
        return {k: dict(v) for k, v in out.items()}

    def abspath(self, sample: Sample) -> Path:
        return safe_join(self.root, sample.path)

    def fingerprint(self) -> str:
        """Hash of (path, size) of every file: changes when files are added, removed or replaced."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.path):
            size = os.path.getsize(self.abspath(s))
            h.update(f"{s.path}\0{size}\0{s.label}\0".encode())
        return h.hexdigest()


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join ``relative`` to ``root`` and refuse any result outside ``root``.

    Paths come from cards and manifests that a user may edit; ``../`` or an
    absolute path must not let them read arbitrary files.
    """
    root_p = Path(root).resolve()
    if not relative or os.path.isabs(relative) or "\0" in relative:
        raise DatasetError(f"refusing path {relative!r}: it must be relative to {root_p}")
    target = (root_p / relative).resolve()
    if target != root_p and root_p not in target.parents:
        raise DatasetError(f"refusing path {relative!r}: it escapes {root_p}")
    return target


def read_dataset(root: str | os.PathLike, name: str | None = None, *, task: str | None = None,
                 test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Read a dataset in any of the three layouts (module docstring). Raises ``DatasetError`` saying why.

    ``task``: the task name of a manifest or folder dataset (default: its folder name).
    ``test_fraction``/``seed``: a dataset without a test split gets one, drawn by patient.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise DatasetError(f"dataset folder {root_p} does not exist")
    name = name or root_p.name
    if any((root_p / sp / lb).is_dir() for sp in SPLITS for lb in LABELS):
        return _read_kermany(root_p, name)
    if (root_p / "manifest.csv").is_file():
        ds = _read_manifest_dataset(root_p, name, task or _slug(name))
    else:
        ds = _read_folders(root_p, name, task or _slug(name))
    return _with_test_split(ds, test_fraction, seed)


def _read_kermany(root_p: Path, name: str) -> Dataset:
    samples: list[Sample] = []
    for split in SPLITS:
        for label in LABELS:
            folder = root_p / split / label
            if not folder.is_dir():
                continue
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if not entry.is_file() or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                subtype, pid = parse_name(entry.name, label)
                rel = f"{split}/{label}/{entry.name}"
                samples.append(Sample(rel, split, label, subtype, pid, source_split=split))
    if not samples:
        raise DatasetError(
            f"no images found in {root_p}: expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg (Kaggle layout)"
        )
    return Dataset(root_p, tuple(samples), name)


def class_order(names: Iterable[str]) -> tuple[str, ...]:
    """The order of a dataset's classes (the model's outputs): a class named normal first, as in the
    Kermany tasks, then the others sorted. The same classes in another layout then give the same head."""
    return tuple(sorted(set(names), key=lambda c: (c.lower() != "normal", c)))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "classes"


def patient_of(filename: str) -> str:
    """The patient a file belongs to when its name says so (Kermany-style names), else the file itself."""
    stem = Path(filename).stem
    if m := _PERSON_RE.match(stem):
        return m.group(1).lower()
    m = _NORMAL_RE.match(stem)
    return m.group(1).upper() if m else stem


def _probe(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (None when its first bytes are an image format's)."""
    from .imaging import sniff_format

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    if not head:
        return "empty file"
    kind = sniff_format(head)
    if kind is None:
        return "not an image (unknown format)"
    return _truncated(path, kind)


def _truncated(path: Path, kind: str) -> str | None:
    """A cheap integrity check without decoding pixels: PNG chunk CRCs (Pillow's verify), a JPEG's end marker."""
    from PIL import Image

    try:
        if kind == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                return None if f.read(2) == b"\xff\xd9" else "truncated JPEG (no end-of-image marker)"
        if kind == "PNG":
            with Image.open(path) as im:
                im.verify()
    except Exception as e:  # Pillow raises many types for a damaged file; each means "skip it, say why"
        return f"damaged {kind} ({type(e).__name__}: {str(e)[:80]})"
    return None


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_files(folder: Path) -> list[Path]:
    """Image files under a class folder, mask folders left out, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in ("mask", "masks"))
        out += [Path(dirpath) / f for f in sorted(filenames) if _is_image_name(f)]
    return out


def _read_folders(root_p: Path, name: str, task: str) -> Dataset:
    split_dirs = [sp for sp in SPLITS if (root_p / sp).is_dir()]
    bases = [(root_p / sp, sp) for sp in split_dirs] or [(root_p, "")]
    found: list[tuple[Path, str, str]] = []
    for base, split in bases:
        for cls in sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            found += [(p, split, cls) for p in _class_files(base / cls)]
    classes = class_order({c for _, _, c in found})
    if not found:
        raise DatasetError(
            f"no images found in {root_p}: expected the Kermany layout {{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg, "
            "class folders ROOT/[train|val|test/]CLASS/*, or a manifest.csv with path,label columns"
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{root_p} is not a labelled dataset: expected ROOT/[train|val|test/]CLASS/* image folders for at least "
            f"two classes, or a manifest.csv with path,label columns (found classes {list(classes)})"
        )
    rows = [(p.relative_to(root_p).as_posix(), split, cls, patient_of(p.name)) for p, split, cls in found]
    return _dataset_from_rows(root_p, name, task, classes, rows, "folders")


def _read_manifest_dataset(root_p: Path, name: str, task: str) -> Dataset:
    table = read_manifest(root_p / "manifest.csv")
    cols = set(table[0]) if table else set()
    if not {"path", "label"} <= cols:
        raise DatasetError(f"{root_p / 'manifest.csv'} needs the columns path,label (optional: patient_id, split); "
                           f"it has {sorted(cols)}")
    bad = sorted({r.get("split", "") for r in table} - {"", *SPLITS})
    if bad:
        raise DatasetError(f"manifest.csv names unknown split(s) {bad}; use train, val, test or leave it empty")
    classes = class_order({r["label"].strip() for r in table if r["label"].strip()})
    rows = [(r["path"].strip(), (r.get("split") or "").strip(), r["label"].strip(),
             (r.get("patient_id") or "").strip() or patient_of(r["path"])) for r in table if r["label"].strip()]
    return _dataset_from_rows(root_p, name, task, classes, rows, "manifest")


def _dataset_from_rows(root_p: Path, name: str, task: str, classes: tuple[str, ...],
                       rows: Sequence[tuple[str, str, str, str]], layout: str) -> Dataset:
    """Samples from (relative path, split or "", class, patient id) rows; files that are not images are skipped.

    Samples are ordered by split, then file name: the order the Kermany reader gives its files
    (NORMAL's ``IM-``/``NORMAL2-`` names sort before PNEUMONIA's ``person``), so the same files in
    another layout are batched, augmented and split exactly alike.
    """
    samples, skipped = [], []
    order = {sp: i for i, sp in enumerate(SPLITS)}
    rows = sorted(rows, key=lambda r: (order.get(r[1] or "train", 0), Path(r[0]).name, r[0]))
    for rel, split, cls, pid in rows:
        try:
            why = _probe(safe_join(root_p, rel))
        except DatasetError as e:
            why = str(e)
        if why:
            skipped.append((rel, why))
            continue
        samples.append(Sample(rel, split or "train", cls, cls, pid, source_split=split, classes=classes))
    if not samples:
        raise DatasetError(f"no usable images in {root_p} ({len(skipped)} files skipped)")
    return Dataset(root_p, tuple(samples), name, layout, task, tuple(skipped))


def _with_test_split(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A test split drawn by patient when the dataset has none (train/val/test folders or a split column)."""
    if ds.split("test") or fraction <= 0:
        return ds
    resplit = {s.path: s for s in patient_split(ds.split("train"), fraction, seed, new_split="test")}
    return replace(ds, samples=tuple(resplit.get(s.path, s) for s in ds.samples))


def check_class_counts(ds: Dataset, splits: Sequence[str] = ("train", "val", "test")) -> None:
    """Raise ``DatasetError`` naming every class that has no image in one of ``splits``."""
    if ds.layout == "kermany":
        return
    classes = ds.tasks[ds.task]
    have = ds.counts()
    empty = [f"{c!r} has {have.get(sp, {}).get(c, 0)} images in {sp}" for sp in splits for c in classes
             if have.get(sp, {}).get(c, 0) == 0]
    if empty:
        raise DatasetError("too few images for a split: " + "; ".join(empty) + ". Add images of that class or "
                           "give it fewer splits (e.g. a smaller --val-fraction still needs one image per class).")


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def patient_split(
    samples: Sequence[Sample], fraction: float, seed: int = 0, new_split: str = "val"
) -> list[Sample]:
    """Move about ``fraction`` of the patients of ``samples`` to ``new_split``.

    Deterministic (hash of seed and patient id, not a RNG state), stratified by the
    patient's subtype, and stable when unrelated patients are added or removed.
    """
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient_id, []).append(s)
    strata: dict[str, list[str]] = {}
    for pid, group in by_patient.items():
        key = Counter(s.subtype for s in group).most_common(1)[0][0]
        strata.setdefault(key, []).append(pid)
    chosen: set[str] = set()
    for pids in strata.values():
        ordered = sorted(pids, key=lambda p: _unit_hash(p, seed))
        n = int(round(len(ordered) * fraction))
        chosen.update(ordered[:n])
    return [replace(s, split=new_split) if s.patient_id in chosen else s for s in samples]


def with_validation_split(
    dataset: Dataset, fraction: float = 0.1, seed: int = 0, min_val_fraction: float = 0.05
) -> Dataset:
    """Return the dataset with a usable patient-level validation split.

    A ``val/`` folder that is large enough (at least ``min_val_fraction`` of train)
    is kept as it is. A missing or token one (Kaggle's has 16 images) is folded back
    into train and a new validation split of ``fraction`` of the patients is drawn.
    """
    train = dataset.split("train")
    val = dataset.split("val")
    if val and len(val) >= min_val_fraction * max(len(train), 1):
        check_class_counts(dataset, [sp for sp in SPLITS if dataset.split(sp)])
        return dataset
    pool = [replace(s, split="train") if s.split == "val" else s for s in dataset.samples if s.split in ("train", "val")]
    resplit = {s.path: s for s in patient_split(pool, fraction, seed)}
    out = replace(dataset, samples=tuple(resplit.get(s.path, s) for s in dataset.samples))
    check_class_counts(out, [sp for sp in SPLITS if sp != "test" or out.split("test")])
    return out


def check_patient_leakage(samples: Iterable[Sample], splits: Sequence[str] = SPLITS) -> dict[str, set[str]]:
    """Patients that occur in more than one of ``splits``, with their splits (empty when clean).

    The official Kermany test split numbers its patients independently of train
    (``IM-0129`` exists in both, as different people), so callers check leakage
    between the splits they made (train/val) and only report the rest.
    """
    seen: dict[str, set[str]] = {}
    for s in samples:
        if s.split in splits:
            seen.setdefault(s.patient_id, set()).add(s.split)
    return {pid: splits for pid, splits in seen.items() if len(splits) > 1}


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_images(
    dataset: Dataset,
    samples: Sequence[Sample],
    prepare: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Decode and ``prepare`` every sample into one stacked uint8 array.

    ``prepare`` is ``preprocess.prepare`` bound to an input spec; decoding runs in
    threads (Pillow releases the GIL while decoding).
    """
    from .imaging import read_gray

    def one(s: Sample) -> np.ndarray:
        return prepare(read_gray(dataset.abspath(s)))

    n = len(samples)
    if n == 0:
        raise DatasetError("no samples to load")
    out: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        for i, arr in enumerate(pool.map(one, samples)):
            out[i] = arr
            if progress and (i % 32 == 0 or i == n - 1):
                progress(i + 1, n)
    return np.stack(out)
