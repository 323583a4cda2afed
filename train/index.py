"""Build a classifier's embedding index: embeddings, thumbnails, KNN metrics and maps.

    python -m train.index ENTRY --data ../shared/data/kermany-224 [--out registry]

ENTRY is an entry id, an entry folder, or a task name such as ``binary`` / ``multiclass``
(the entry the app uses for that task). Every image of every split is embedded with the entry's
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
from pathlib import Path

from cxr_core.projection import PROJECTIONS
from cxr_core.reference import IndexConfig, build_index
from cxr_core.registry import (
    Entry,
    RegistryError,
    list_entries,
    load_entry,
    registry_root,
    select,
    verify_entry,
)


def resolve_entry(spec: str, root: str | Path | None = None) -> Entry:
    """An entry from its id, its folder, or a task name (the entry the app would use)."""
    p = Path(spec)
    if (p / "card.json").is_file():
        return verify_entry(p).entry()
    statuses = list_entries(root)
    if any(s.id == spec for s in statuses):
        return load_entry(root, spec)
    entry = select(statuses, "classifier", spec)  # a task name: the classifier the app uses for it
    if entry is None:
        raise RegistryError(f"no entry and no usable classifier for the task {spec!r} in {registry_root(root)}")
    return entry


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, IndexConfig]:
    d = IndexConfig()
    p = argparse.ArgumentParser(prog="python -m train.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entry", help="entry id, entry folder, or a task name such as binary|multiclass (the entry the app uses)")
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
    card = entry.classifier_card
    for key in ("test", "test_knn_majority", "test_knn_weighted"):
        if (m := card.metric(key)) is not None:
            print(f"  {key:>20}: {fmt_metrics(m)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
