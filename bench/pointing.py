"""Pointing game over several training seeds: which CAM method and layer localise the phantoms' lesions.

    python -m bench.pointing                                   # seeds 1-7, binary + 3-class, Lite0 at 160 px
    python -m bench.pointing --seeds 1,2 --tasks binary --size 224 --out /tmp/pointing

For each seed: write the synthetic set (``SyntheticSpec(seed=s)``, the demo's 256-px phantoms),
train the classifier with the demo's recipe (``cxr_core.demo.DemoConfig``: pretrained Lite0, 8
epochs, batch 32, that seed), then score every CAM method at every layer of ``--layers`` (default:
the final feature map, the two blocks before it and the stride-16 stage) on the correctly
classified pneumonia phantoms of the test split. One model is one draw of "a model trained on
them": a single run says little, so the table shows each seed and the minimum.

Prints one line per (task, layer, method): the strict rate (peak inside the lesion mask as drawn)
per seed, its min and mean, and the mean rate with the lesion dilated by 15 px at 224-px scale
(Zhang et al.'s pointing-game tolerance). About 2 minutes per seed and task on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def run_seed(seed: int, task: str, size: int, layers: list[str], root: Path, log, n_train: int | None = None,
             epochs: int | None = None) -> list[dict]:
    from scipy import ndimage

    from cxr_core.demo import DemoConfig
    from cxr_core.explain import METHODS, Explainer, pointing_game
    from cxr_core.inference import load_classifier
    from cxr_core.synthetic import SyntheticSpec, load_mask, write_dataset
    from cxr_core.training import train_classifier

    demo = DemoConfig()
    spec = SyntheticSpec(seed=seed)
    if n_train:
        spec = SyntheticSpec(n_per_class={**spec.n_per_class, "train": n_train}, seed=seed)
    data = write_dataset(root / f"seed{seed}" / "data", spec)
    t0 = time.perf_counter()
    entry = train_classifier(
        demo.train_config(data, task, root / f"seed{seed}" / "registry", size=size, tta=1, seed=seed,
                          epochs=epochs or demo.epochs, patience=epochs or demo.epochs),
        log=lambda s: None,
    )
    train_s = time.perf_counter() - t0
    clf = load_classifier(entry)
    test = entry.classifier_card.metric("test") or {}
    log(f"seed {seed} {task}: trained in {train_s:.0f} s, test accuracy {test['accuracy']:.3f}")
    rows = []
    for layer in layers:
        ex = Explainer.from_loaded(clf, target_layer=layer)
        for method in METHODS:
            r = pointing_game(ex, str(data), "test", method=method)
            dist = [ndimage.distance_transform_edt(~load_mask(str(data), p["path"]))[p["peak"]] for p in r.per_image]
            side = load_mask(str(data), r.per_image[0]["path"]).shape[0] if r.per_image else 224
            tol = 15 * side / 224
            rows.append({
                "seed": seed, "task": task, "size": size, "layer": layer, "method": method, "n": r.n, "rate": r.rate,
                "tolerant": sum(d <= tol for d in dist) / len(dist) if dist else 0.0, "chance": r.chance,
                "centre": r.center_rate, "by_subtype": {k: v["rate"] for k, v in r.by_subtype.items()},
                "test_accuracy": test["accuracy"], "train_s": round(train_s, 1), "n_train": spec.n_per_class["train"],
                "epochs": epochs or demo.epochs,
            })
    return rows


def summarise(rows: list[dict], min_n: int) -> list[str]:
    lines = []
    keys = sorted({(r["task"], r["size"], r["layer"], r["method"]) for r in rows})
    for task, size, layer, method in keys:
        sel = sorted((r for r in rows if (r["task"], r["size"], r["layer"], r["method"]) == (task, size, layer, method)),
                     key=lambda r: r["seed"])
        used = [r for r in sel if r["n"] >= min_n]
        if not used:
            continue
        rates = [r["rate"] for r in used]
        lines.append(
            f"{task:10s} {size:4d} {layer:9s} {method:9s} min {min(rates):.2f} mean {statistics.mean(rates):.2f}  "
            f"15px-tolerant mean {statistics.mean(r['tolerant'] for r in used):.2f}  | "
            + " ".join(f"s{r['seed']}:{r['rate']:.2f}" for r in used)
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-7", help="e.g. 1-7 or 1,3,5")
    ap.add_argument("--tasks", default="binary,multiclass")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--layers", default="bn2,blocks.6,blocks.5,blocks.4")
    ap.add_argument("--out", default="/tmp/cxr-pointing", help="where the phantoms and models go (kept)")
    ap.add_argument("--jsonl", help="also append one JSON line per measurement here")
    ap.add_argument("--min-n", type=int, default=10,
                    help="leave out a model that classified fewer pneumonia phantoms correctly than this")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--n-train", type=int, help="training phantoms per subtype (default: the demo's)")
    ap.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for seed in _seeds(args.seeds):
        for task in args.tasks.split(","):
            got = run_seed(seed, task, args.size, args.layers.split(","), Path(args.out), lambda s: print(s, flush=True),
                           n_train=args.n_train, epochs=args.epochs)
            rows.extend(got)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in got)
    print(f"# pointing game, correctly classified pneumonia phantoms, test split, Lite0 at {args.size} px, "
          f"seeds {args.seeds}; models with n < {args.min_n} left out")
    for line in summarise(rows, args.min_n):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
