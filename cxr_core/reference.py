"""A classifier's reference index: building it from a dataset and reading it back.

``build_index`` embeds every image of every split with the entry's own weights and
preprocessing (nothing is retrained) and adds these files to the entry:

    index.npz       ids, paths, labels, subtypes, splits, patients, targets, embeddings
                    (L2-normalised float32), probs, predicted, knn_predicted, classes
    thumbs.npy      uint8 thumbnails (N, S, S), row-aligned, memory-mapped by readers
    projection.npz  tsne_2d, tsne_3d, umap_2d, umap_3d (those asked for)

The card gets ``index`` (what was built and how long it took) and, beside the head's
metrics, the KNN votes of val and test queried against train (``test_knn_majority``...).
The validation split is redrawn by patient exactly as the classifier's training drew it
(the card's fraction and seed), so the recorded split of every image is the one the model
saw. :class:`ReferenceSet` is that index loaded for the app's queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cards import MetricKey
from .compact import load_thumbs
from .config import InputSpec
from .data import Dataset, DatasetError, Sample, load_images, safe_join
from .imaging import ImageDecodeError, read_gray
from .inference import infer, load_classifier, pick_device
from .metrics import predicted_class, task_metrics
from .neighbors import KnnIndex, Neighbors, default_k, l2_normalize, leave_one_out
from .preprocess import prepare
from .progress import Progress
from .projection import PROJECTIONS, compute
from .projection import place as place_on_map
from .registry import Entry, RegistryError, add_files, update_info

INDEX_FILES = ("index.npz", "thumbs.npy", "projection.npz")


@dataclass
class IndexConfig:
    """One indexing run; stored in the card's ``index`` section."""

    k: int | None = None  # None = 7 for binary, 5 for 3-class
    thumb_size: int = 96
    batch_size: int = 64
    chunk: int = 8192  # images decoded at a time (bounds memory at 100k images: 8192 x 224² uint8 = 411 MB)
    device: str = "auto"
    projections: tuple[str, ...] = PROJECTIONS
    seed: int = 0
    max_per_split: int | None = None
    tsne_jobs: int | None = None


def _cap(samples: list[Sample], cap: int | None, seed: int) -> list[Sample]:
    if cap is None or len(samples) <= cap:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), cap, replace=False))
    return [samples[i] for i in keep]


def reference_samples(entry: Entry, data: str | Path, max_per_split: int | None = None, seed: int = 0) -> tuple[Dataset, list[Sample]]:
    """Every sample of ``data`` with the split the entry's training used (val redrawn by patient the same way)."""
    ds = entry.info.dataset.load(data, entry.task)
    samples: list[Sample] = []
    for split in ("train", "val", "test"):
        samples += _cap(ds.split(split), max_per_split, seed)
    return ds, samples


def embed_dataset(
    entry: Entry,
    dataset: Dataset,
    samples: Sequence[Sample],
    cfg: IndexConfig,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings L2-normalised float32, probs, thumbnails uint8) for ``samples``, row-aligned."""
    device = pick_device(cfg.device)
    clf = load_classifier(entry, device=str(device))
    spec, ts = clf.spec, cfg.thumb_size
    thumb_spec = InputSpec(size=ts)
    n_in = spec.size * spec.size

    def both(gray: np.ndarray) -> np.ndarray:
        # One decode per image gives both the model input and the thumbnail; they travel
        # flattened side by side because load_images stacks one array per image.
        return np.concatenate([prepare(gray, spec).ravel(), prepare(gray, thumb_spec).ravel()])

    n = len(samples)
    emb_parts, prob_parts = [], []
    thumbs = np.empty((n, ts, ts), dtype=np.uint8)
    one_chunk = n <= cfg.chunk
    for start in range(0, n, cfg.chunk):
        part = samples[start : start + cfg.chunk]
        # One chunk: a decode bar then an embed bar. Several: one bar over both (bars must not restart).
        decode_progress = (lambda i, _n: progress("decode", i, n)) if progress and one_chunk else None
        flat = load_images(dataset, part, both, progress=decode_progress)
        x = flat[:, :n_in].reshape(-1, spec.size, spec.size)
        thumbs[start : start + len(part)] = flat[:, n_in:].reshape(-1, ts, ts)
        with torch.inference_mode():
            probs, emb = infer(
                clf.model, x, spec, clf.task, batch_size=cfg.batch_size, device=device, want_embeddings=True,
                progress=(lambda i, _n, s=start: progress("embed" if one_chunk else "decode + embed", s + i, n))
                if progress else None,
            )
        assert emb is not None
        emb_parts.append(l2_normalize(emb))
        prob_parts.append(probs.astype(np.float32))
    return np.concatenate(emb_parts), np.concatenate(prob_parts), thumbs


def knn_split_metrics(
    task: str, classes: list[str], emb: np.ndarray, targets: np.ndarray, splits: np.ndarray, k: int
) -> dict[str, dict[str, Any]]:
    """Val and test queried against train: majority and distance-weighted vote, as task metrics."""
    ref_rows = np.nonzero(splits == "train")[0]
    if len(ref_rows) <= k:
        return {}
    ref = KnnIndex(emb[ref_rows], targets[ref_rows], len(classes), k)
    out: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        rows = np.nonzero(splits == split)[0]
        if len(rows) == 0:
            continue
        nb = ref.query(emb[rows])
        for weights, name in (("uniform", "majority"), ("distance", "weighted")):
            shares = ref.shares(nb, weights)  # type: ignore[arg-type]
            m = task_metrics(task, targets[rows], shares, classes)
            # The vote's own rule (ties to the lowest class, as scikit-learn) next to the 0.5-threshold view.
            m["vote_accuracy"] = float(np.mean(shares.argmax(axis=1) == targets[rows]))
            m.update({"k": k, "reference": "train", "vote": name})
            out[str(MetricKey(split, knn=name))] = m
    return out


def _index_arrays(samples: Sequence[Sample], targets: np.ndarray, emb: np.ndarray, probs: np.ndarray, predicted: np.ndarray,
                  knn_predicted: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    return {
        "ids": np.arange(len(samples), dtype=np.int64),
        "paths": np.array([s.path for s in samples]),
        "labels": np.array([s.label for s in samples]),
        "subtypes": np.array([s.subtype for s in samples]),
        "splits": np.array([s.split for s in samples]),
        "patients": np.array([s.patient_id for s in samples]),
        "targets": targets,
        "embeddings": emb.astype(np.float32),
        "probs": probs.astype(np.float32),
        "predicted": predicted,
        "knn_predicted": knn_predicted.astype(np.int64),
        "classes": np.array(classes),
    }


def _index_info(cfg: IndexConfig, dataset: Dataset, splits: np.ndarray, emb: np.ndarray, k: int, loo_k: int,
                maps: dict[str, np.ndarray], seconds: dict[str, Any]) -> dict[str, Any]:
    """The card's ``index`` section: what was built, from what, and how long it took."""
    names, counts = np.unique(splits, return_counts=True)
    return {
        "k": k, "n": len(splits), "splits": {str(s): int(c) for s, c in zip(names, counts, strict=True)},
        "embedding_dim": int(emb.shape[1]), "thumb_size": cfg.thumb_size, "data_root": str(dataset.root.resolve()),
        "dataset_name": dataset.name, "dataset_fingerprint": dataset.fingerprint(), "projections": sorted(maps),
        "seed": cfg.seed, "max_per_split": cfg.max_per_split,
        "knn_predicted": {"reference": "all other rows", "k": loo_k, "vote": "majority"},
        "seconds": seconds, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _store_knn_metrics(entry: Entry, info: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    knn = {MetricKey.parse(k): v for k, v in metrics.items()}
    update_info(entry, lambda _: entry.classifier_card.with_index(info, knn))


def build_index(
    entry: Entry,
    data: str | Path,
    cfg: IndexConfig | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> Entry:
    """Embed every image of ``data`` with ``entry`` and add the index files and KNN metrics to it."""
    cfg = cfg or IndexConfig()
    if entry.kind != "classifier":
        raise RegistryError(f"entry {entry.id} is a {entry.kind}, not a classifier")
    t0 = time.perf_counter()
    task, classes = entry.task or "binary", entry.classes
    k = cfg.k or default_k(task)
    dataset, samples = reference_samples(entry, data, cfg.max_per_split, cfg.seed)
    log(f"indexing {len(samples)} images of {dataset.root} with {entry.id}")
    emb, probs, thumbs = embed_dataset(entry, dataset, samples, cfg, progress)
    t_embed = time.perf_counter()
    targets = np.array([s.target(task) for s in samples], dtype=np.int64)
    splits = np.array([s.split for s in samples])
    metrics = knn_split_metrics(task, classes, emb, targets, splits, k)
    loo_k = min(k, len(samples) - 1)
    _, knn_predicted = leave_one_out(KnnIndex(emb, targets, len(classes), loo_k))
    t_knn = time.perf_counter()
    for key, m in metrics.items():
        log(f"{key}: accuracy {m['vote_accuracy']:.4f} (k={k})")
    maps, proj_seconds = compute(emb, cfg.projections, seed=cfg.seed, n_jobs=cfg.tsne_jobs, progress=progress, log=log) if cfg.projections else ({}, {})
    t_proj = time.perf_counter()
    index = _index_arrays(samples, targets, emb, probs, predicted_class(task, probs, entry.classifier_card.threshold_or(0.5)),
                          knn_predicted, classes)
    add_files(entry, {"index.npz": index, "thumbs.npy": thumbs, **({"projection.npz": maps} if maps else {})})
    seconds = {"embed": t_embed - t0, "knn": t_knn - t_embed, "projections": proj_seconds, "total": time.perf_counter() - t0}
    info = _index_info(cfg, dataset, splits, emb, k, loo_k, maps, seconds)
    _store_knn_metrics(entry, info, metrics)
    log(f"index of {len(samples)} images written to {entry.path} in {info['seconds']['total']:.1f}s "
        f"(embed {t_embed - t0:.1f}s, knn {t_knn - t_embed:.1f}s, maps {t_proj - t_knn:.1f}s)")
    return entry


@dataclass
class ReferenceSet:
    """A classifier's embedding index as the app uses it: rows, thumbnails, maps and a KNN index.

    Row ``i`` of every array is image ``i`` of ``index.npz``; ``thumbs`` is memory-mapped.
    """

    entry_id: str
    task: str
    classes: list[str]
    paths: np.ndarray
    labels: np.ndarray
    subtypes: np.ndarray
    splits: np.ndarray
    patients: np.ndarray
    targets: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray
    knn_predicted: np.ndarray
    knn: KnnIndex
    thumbs: np.ndarray
    maps: dict[str, np.ndarray]
    data_root: str | None
    info: dict

    @classmethod
    def from_entry(cls, entry: Entry) -> ReferenceSet:
        z = entry.load_npz("index.npz")
        maps = entry.load_npz("projection.npz") if entry.has("projection.npz") else {}
        info = dict(entry.classifier_card.index)
        task = entry.task or "binary"
        classes = [str(c) for c in z["classes"]] if "classes" in z else entry.classes
        k = int(info.get("k") or default_k(task))
        n = len(z["paths"])
        return cls(
            entry_id=entry.id,
            task=task,
            classes=classes,
            paths=z["paths"],
            labels=z["labels"],
            subtypes=z["subtypes"],
            splits=z["splits"],
            patients=z["patients"],
            targets=z["targets"],
            probs=z["probs"],
            predicted=z["predicted"],
            knn_predicted=z["knn_predicted"] if "knn_predicted" in z else np.full(n, -1),
            knn=KnnIndex(z["embeddings"], z["targets"], len(classes), k),
            thumbs=load_thumbs(entry),
            maps={name: np.asarray(v, dtype=np.float32) for name, v in maps.items()},
            data_root=info.get("data_root"),
            info=info,
        )

    def __len__(self) -> int:
        return len(self.knn)

    @property
    def k(self) -> int:
        return self.knn.k

    def find(self, text: str, limit: int = 200) -> np.ndarray:
        """Rows whose path contains ``text`` (case-insensitive), at most ``limit``."""
        text = text.strip().lower()
        if not text:
            return np.empty(0, dtype=np.int64)
        hits = np.nonzero(np.char.find(np.char.lower(self.paths), text) >= 0)[0]
        return hits[:limit]

    def place(self, vector: np.ndarray, map_name: str, k: int | None = None, *,
              neighbors: Neighbors | None = None) -> np.ndarray:
        """Coordinates of an embedding on one of the stored maps (from its K nearest rows).

        ``neighbors``: the vector's nearest rows from an earlier :meth:`KnnIndex.query` with at
        least ``k`` columns (the Predict page has them already): saves a second pass over the index.
        """
        k = k or self.k
        if neighbors is None or neighbors.ids.shape[1] < k:
            neighbors = self.knn.query(vector, k)
        return place_on_map(self.maps[map_name], Neighbors(neighbors.ids[:1, :k], neighbors.dist[:1, :k]))[0]

    def image(self, row: int) -> np.ndarray:
        """The full-size grayscale image of a row, or its thumbnail when the dataset is not reachable."""
        if self.data_root:
            try:
                return read_gray(safe_join(self.data_root, str(self.paths[row])))
            except (OSError, DatasetError, ImageDecodeError):
                pass
        return np.asarray(self.thumbs[row])
