"""Reading datasets in the Kaggle ``chest-xray-pneumonia`` layout.

``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<name>.{jpeg,jpg,png,...}``. The subtype
(normal | bacteria | virus) and the patient id come from the file name, as in the
original Kermany release: ``personN_bacteria_M.jpeg``, ``personN_virus_M.jpeg``,
``IM-XXXX-YYYY.jpeg`` and ``NORMAL2-IM-XXXX-YYYY.jpeg``.

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


class DatasetError(ValueError):
    """A dataset folder that cannot be read as the Kaggle layout; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset. ``path`` is relative to the dataset root, POSIX style."""

    path: str
    split: str
    label: str  # NORMAL | PNEUMONIA
    subtype: str  # normal | bacteria | virus
    patient_id: str
    source_split: str = ""  # the folder it came from, before any re-splitting

    def target(self, task: str) -> int:
        """Class index for ``task`` (see ``config.TASK_CLASSES``)."""
        if task == "binary":
            return LABELS.index(self.label)
        if task == "multiclass":
            return TASK_CLASSES["multiclass"].index(self.subtype)
        raise ValueError(f"unknown task {task!r}")


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
            f"cannot read the pneumonia subtype from {filename!r}: expected personN_bacteria_M or personN_virus_M"
        )
    return m.group(2).lower(), m.group(1).lower()


@dataclass(frozen=True)
class Dataset:
    """A dataset root and its samples (in a stable, sorted order)."""

    root: Path
    samples: tuple[Sample, ...]
    name: str = ""

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


def read_dataset(root: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a Kaggle-layout folder. Raises ``DatasetError`` with a clear message."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise DatasetError(f"dataset folder {root_p} does not exist")
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
    return Dataset(root_p, tuple(samples), name or root_p.name)


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
        return dataset
    pool = [replace(s, split="train") if s.split == "val" else s for s in dataset.samples if s.split in ("train", "val")]
    resplit = {s.path: s for s in patient_split(pool, fraction, seed)}
    samples = tuple(resplit.get(s.path, s) for s in dataset.samples)
    return replace(dataset, samples=samples)


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
