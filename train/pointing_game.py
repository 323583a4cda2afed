"""Pointing game: does a classifier's class-activation-map peak fall inside the known lesion of synthetic phantoms?

    python -m train.pointing_game ENTRY [--data DIR] [--registry ROOT] [--method hirescam|gradcam|gradcam++|all]
                                        [--split test] [--tolerance PX] [--all-predictions] [--layer NAME]

ENTRY is an entry id in the registry (``$CXR_REGISTRY`` or ``./registry``) or the path of an entry
folder. DIR is a synthetic set written by ``cxr_core.synthetic.write_dataset`` (it has lesion masks
under ``masks/``); it defaults to the dataset the entry was trained on. Only PNEUMONIA phantoms are
scored, by default only those the model classifies correctly; the map explains the image's true
class. Printed beside the rate: the chance rate (mean lesion-mask area fraction, the hit rate of a
uniformly random point) and the hit rate of always pointing at the image centre.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train._cli import tqdm_progress


def main(argv: list[str] | None = None) -> int:
    from cxr_core.explain import METHODS, Explainer, pointing_game

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry", help="entry id, entry folder, or binary|multiclass (the entry the app uses)")
    ap.add_argument("--data", help="synthetic data set root (default: the entry's own dataset)")
    ap.add_argument("--registry", help="registry root (default: $CXR_REGISTRY or ./registry)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--method", default="all", choices=[*METHODS, "all"])
    ap.add_argument("--tolerance", type=int, default=0, help="dilate lesion masks by this many pixels (default 0)")
    ap.add_argument("--all-predictions", action="store_true", help="score misclassified phantoms too")
    ap.add_argument("--layer", help="target layer module name (default: per architecture)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--sanity", type=int, default=0, metavar="N",
                    help="also run the cascading randomisation check on N PNEUMONIA images of the split")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from cxr_core.registry import RegistryError
    from train.index import resolve_entry

    try:
        entry = resolve_entry(args.entry, args.registry)
    except RegistryError as e:
        ap.error(str(e))
    card = entry.classifier_card
    data = args.data or card.dataset.root
    if not data or not (Path(data) / "masks").is_dir():
        ap.error(f"{data!r} has no lesion masks (masks/): pass --data with a synthetic set from write_dataset")
    from cxr_core.inference import load_classifier
    from cxr_core.models import default_cam_layer

    clf = load_classifier(entry)
    print(f"entry {entry.id} · {card.architecture} · {card.task} · "
          f"layer {args.layer or 'each method’s default'}")
    print(f"data {data} · split {args.split} · tolerance {args.tolerance} px · "
          f"{'all' if args.all_predictions else 'correctly classified'} PNEUMONIA phantoms")
    progress, close = tqdm_progress()
    explainers: dict[str, Explainer] = {}
    for method in METHODS if args.method == "all" else [args.method]:
        layer = args.layer or default_cam_layer(str(card.architecture), method) or ""
        if layer not in explainers:  # one model copy per layer
            explainers[layer] = Explainer.from_loaded(clf, target_layer=args.layer, method=method)
        ex = explainers[layer]
        r = pointing_game(
            ex, data, args.split, method=method, tolerance_px=args.tolerance,
            only_correct=not args.all_predictions, progress=lambda i, n, m=method: progress(m, i, n),
        )
        close()
        print(f"{method:10s} {ex.layer_name:10s} pointing rate {r.rate:.3f} ({r.hits}/{r.n})  chance {r.chance:.3f}  "
              f"centre {r.center_rate:.3f}  misclassified skipped {r.n_skipped_incorrect}  empty maps {r.n_empty}")
        for sub, v in r.by_subtype.items():
            print(f"{'':10s}   {sub:9s} {v['rate']:.3f} (n={int(v['n'])})  chance {v['chance']:.3f}")
    if args.sanity:
        _sanity(entry, data, args)
    return 0


def _sanity(entry, data: str, args: argparse.Namespace) -> None:
    import numpy as np

    from cxr_core.data import read_dataset
    from cxr_core.explain import METHODS, cascading_randomisation
    from cxr_core.imaging import read_gray
    from cxr_core.inference import load_classifier

    clf = load_classifier(entry)
    ds = read_dataset(data)
    images = [read_gray(ds.abspath(s)) for s in ds.split(args.split) if s.label == "PNEUMONIA"][: args.sanity]
    target = "PNEUMONIA" if clf.task == "binary" else None
    print(f"cascading randomisation (Adebayo et al. 2018), {len(images)} images, target {target or 'predicted'}: "
          "mean Spearman rho with the trained model's maps")
    for method in METHODS if args.method == "all" else [args.method]:
        repeat, stages = cascading_randomisation(
            clf.model, clf.architecture, clf.task, clf.spec, images, method=method, target=target,
        )
        cells = [f"trained again {float(np.mean(repeat)):.3f}"]
        cells += [f"+{'+'.join(s.randomised[-1:])} {s.mean:.3f}" + (f" ({s.n_empty} empty)" if s.n_empty else "")
                  for s in stages]
        print(f"{method:10s} " + " · ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
