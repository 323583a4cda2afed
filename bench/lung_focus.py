"""Lung focus of a registry classifier's class activation maps (issue 14), on its official test films.

    python -m bench.lung_focus ENTRY [--registry ROOT] [--films 80] [--data DIR] [--threads 1]

ENTRY is an entry id, an entry folder, or binary|multiclass (the entry the app uses). HiResCAM (the
Predict page's default map, at the stride-16 layer) explains the predicted class of ``--films`` evenly
spaced films of the entry's test split (path order, ``training.focus_films``); printed: the share whose
peak lies inside the lung box (rows 12-85 %, columns 10-90 % of the input) and the mean share of the
map's mass inside it, the numbers ``train_classifier`` stores as the card's ``lung_focus``. Use it for
entries trained before the card carried them (the "before" of a recipe change).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lung_focus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry")
    ap.add_argument("--registry", default=None)
    ap.add_argument("--films", type=int, default=80)
    ap.add_argument("--data", default=None, help="dataset root (default: the card's)")
    ap.add_argument("--threads", type=int, default=1)
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)

    from cxr_core.data import load_images, read_dataset, with_validation_split
    from cxr_core.explain import card_dataset
    from cxr_core.inference import load_classifier
    from cxr_core.lung_focus import focus_films, lung_focus_of_model
    from cxr_core.preprocess import prepare
    from train.index import resolve_entry

    entry = resolve_entry(ns.entry, ns.registry)
    clf = load_classifier(entry)
    card = entry.classifier_card
    ds = with_validation_split(read_dataset(ns.data), 0.1, 0) if ns.data else card_dataset(card)
    test = ds.split("test")
    keep = focus_films(len(test), ns.films)
    arr = load_images(ds, [test[i] for i in keep], lambda g: prepare(g, clf.spec), workers=2)
    t0 = time.perf_counter()
    r = lung_focus_of_model(clf.model, str(card.architecture), str(card.task), clf.spec, arr, films=len(arr))
    stored = card.lung_focus or {}
    print(f"{entry.id} ({card.task}, {card.architecture}, {clf.spec.size} px): {r['films']} test films, "
          f"{r['method']} at {r['layer']}: peak inside the lung box {r['peak_inside']:.3f} "
          f"({int(round(r['peak_inside'] * r['films']))}/{r['films']}), mass inside {r['mass_inside']:.3f} "
          f"[{time.perf_counter() - t0:.0f} s]" + (f"; card says {stored['peak_inside']:.3f} / {stored['mass_inside']:.3f}" if stored else ""))
    return 0 if np.isfinite(r["peak_inside"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
