"""Build a classifier's embedding index: embeddings, thumbnails, KNN metrics and maps.

    python -m train.index ENTRY --data ../shared/data/kermany-224 [--out registry]

ENTRY is an entry id, an entry folder, or ``binary`` / ``multiclass`` (the entry the
app uses for that task). Every image of every split is embedded with the entry's
own weights and preprocessing (nothing is retrained), and these files are added to
the entry folder:

    index.npz       ids, paths, labels, subtypes, splits, patients, targets, embeddings
                    (L2-normalised float32), probs, predicted, knn_predicted, classes
    thumbs.npy      uint8 thumbnails (N, S, S), row-aligned, memory-mapped by readers
    projection.npz  tsne_2d, tsne_3d, umap_2d, umap_3d (those asked for)

The card gets ``index`` (what was built and how long it took) and, beside the head's
metrics, ``test_knn_majority`` / ``test_knn_weighted`` (and ``val_...``): the test
split queried against the train split as reference. The validation split is redrawn
by patient exactly as the classifier's training drew it (the card's fraction and
seed), so the recorded split of every image is the one the model saw.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.config import InputSpec
from cxr_core.data import Dataset, Sample, load_images, read_dataset, with_validation_split
from cxr_core.metrics import task_metrics
from cxr_core.neighbors import KnnIndex, default_k, l2_normalize, leave_one_out
from cxr_core.preprocess import prepare
from cxr_core.projection import PROJECTIONS, compute
from cxr_core.registry import (
    Entry,
    RegistryError,
    add_files,
    list_entries,
    load_entry,
    registry_root,
    select,
    update_card,
    verify_entry,
)

Progress = Callable[[str, int, int], None]
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


def resolve_entry(spec: str, root: str | Path | None = None) -> Entry:
    """An entry from its id, its folder, or a task name (the entry the app would use)."""
    p = Path(spec)
    if (p / "card.json").is_file():
        return verify_entry(p).entry()
    if spec in ("binary", "multiclass"):
        entry = select(list_entries(root), "classifier", spec)
        if entry is None:
            raise RegistryError(f"no usable {spec} classifier in {registry_root(root)}")
        return entry
    return load_entry(root, spec)


def _cap(samples: list[Sample], cap: int | None, seed: int) -> list[Sample]:
    if cap is None or len(samples) <= cap:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), cap, replace=False))
    return [samples[i] for i in keep]


def reference_samples(entry: Entry, data: str | Path, max_per_split: int | None = None, seed: int = 0) -> tuple[Dataset, list[Sample]]:
    """Every sample of ``data`` with the split the entry's training used (val redrawn by patient the same way)."""
    val = entry.card.get("dataset", {}).get("validation", {})
    ds = with_validation_split(read_dataset(data), float(val.get("fraction", 0.1)), int(val.get("seed", 0)))
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
    import torch

    from cxr_core.inference import infer, load_classifier, pick_device

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


def predicted_classes(task: str, probs: np.ndarray, threshold: float) -> np.ndarray:
    """The head's answer per image, with the card's threshold for the binary task (as the app shows it)."""
    if task == "binary":
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


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
            out[f"{split}_knn_{name}"] = m
    return out


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
    predicted = predicted_classes(task, probs, float(entry.card.get("threshold", 0.5)))
    metrics = knn_split_metrics(task, classes, emb, targets, splits, k)
    loo_k = min(k, len(samples) - 1)
    _, knn_predicted = leave_one_out(KnnIndex(emb, targets, len(classes), loo_k))
    t_knn = time.perf_counter()
    for key, m in metrics.items():
        log(f"{key}: accuracy {m['vote_accuracy']:.4f} (k={k})")

    maps, proj_seconds = compute(emb, cfg.projections, seed=cfg.seed, n_jobs=cfg.tsne_jobs, progress=progress, log=log) if cfg.projections else ({}, {})
    t_proj = time.perf_counter()

    index = {
        "ids": np.arange(len(samples), dtype=np.int64),
        "paths": np.array([s.path for s in samples]),
        "labels": np.array([s.label for s in samples]),
        "subtypes": np.array([s.subtype for s in samples]),
        "splits": splits,
        "patients": np.array([s.patient_id for s in samples]),
        "targets": targets,
        "embeddings": emb.astype(np.float32),
        "probs": probs.astype(np.float32),
        "predicted": predicted,
        "knn_predicted": knn_predicted.astype(np.int64),
        "classes": np.array(classes),
    }
    files: dict[str, Any] = {"index.npz": index, "thumbs.npy": thumbs}
    if maps:
        files["projection.npz"] = maps
    add_files(entry, files)
    counts: dict[str, int] = {}
    for s in splits:
        counts[str(s)] = counts.get(str(s), 0) + 1
    info = {
        "k": k,
        "n": len(samples),
        "splits": counts,
        "embedding_dim": int(emb.shape[1]),
        "thumb_size": cfg.thumb_size,
        "data_root": str(dataset.root.resolve()),
        "dataset_name": dataset.name,
        "dataset_fingerprint": dataset.fingerprint(),
        "projections": sorted(maps),
        "seed": cfg.seed,
        "max_per_split": cfg.max_per_split,
        "knn_predicted": {"reference": "all other rows", "k": loo_k, "vote": "majority"},
        "seconds": {
            "embed": t_embed - t0,
            "knn": t_knn - t_embed,
            "projections": proj_seconds,
            "total": time.perf_counter() - t0,
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def change(card: dict[str, Any]) -> None:
        card["index"] = info
        card.setdefault("metrics", {}).update(metrics)
        # Drop KNN metrics of an earlier index that this one did not recompute (e.g. no val split now).
        for key in [k_ for k_ in card["metrics"] if "_knn_" in k_ and k_ not in metrics]:
            del card["metrics"][key]

    update_card(entry, change)
    log(f"index of {len(samples)} images written to {entry.path} in {info['seconds']['total']:.1f}s "
        f"(embed {t_embed - t0:.1f}s, knn {t_knn - t_embed:.1f}s, maps {t_proj - t_knn:.1f}s)")
    return entry


def demo_step(root: Path, data: Path, classifiers: list[Entry], progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:
    """Demo build: index every demo classifier on the synthetic set (CPU)."""
    done = []
    for entry in classifiers:
        if entry.kind == "classifier":
            done.append(build_index(entry, data, IndexConfig(device="cpu"), progress, log))
    return done


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, IndexConfig]:
    d = IndexConfig()
    p = argparse.ArgumentParser(prog="python -m train.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entry", help="entry id, entry folder, or binary|multiclass (the entry the app uses)")
    p.add_argument("--data", required=True, help="dataset root in the Kaggle chest-xray-pneumonia layout")
    p.add_argument("--out", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--k", type=int, default=None, help="neighbours for the KNN vote (default 7 binary, 5 three-class)")
    p.add_argument("--thumb-size", type=int, default=d.thumb_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--projections", default=",".join(d.projections),
                   help=f"comma-separated subset of {','.join(PROJECTIONS)} ('' for none)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-per-split", type=int, default=None, help="cap images per split (quick runs)")
    ns = p.parse_args(argv)
    names = tuple(x.strip() for x in ns.projections.split(",") if x.strip())
    bad = [x for x in names if x not in PROJECTIONS]
    if bad:
        p.error(f"unknown projection(s) {bad}; choose from {list(PROJECTIONS)}")
    cfg = IndexConfig(k=ns.k, thumb_size=ns.thumb_size, batch_size=ns.batch_size, device=ns.device,
                      projections=names, seed=ns.seed, max_per_split=ns.max_per_split)
    return ns, cfg


def main(argv: list[str] | None = None) -> int:
    from ._cli import fmt_metrics, tqdm_progress

    ns, cfg = parse_args(argv)
    try:
        entry = resolve_entry(ns.entry, ns.out)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress, close = tqdm_progress()
    try:
        build_index(entry, ns.data, cfg, progress)
    except (ValueError, FileNotFoundError, RegistryError) as e:
        close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    close()
    m = entry.card.get("metrics", {})
    for key in ("test", "test_knn_majority", "test_knn_weighted"):
        if key in m:
            print(f"  {key:>20}: {fmt_metrics(m[key])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
