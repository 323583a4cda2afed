"""Sweep feature reconstruction detectors on cached frozen feature maps; one jsonl row per configuration.

    python -m bench.recon_sweep --data ../shared/data/kermany-224 --size 224 --kind inpaint --epochs 40
    python -m bench.recon_sweep --data ../shared/data/kermany-224 --size 224 --kind distill --grid

Feature maps of EfficientNet-Lite0 blocks 1-4 on the stride-16 grid are extracted once per
(split, size) into ``registry-research/_fmaps`` (git-ignored) and reused. Each row of
``registry-research/feature_recon.jsonl`` holds the recipe, validation and test AUROC/AUPR,
sensitivity/specificity on test at the Youden threshold chosen on validation, and timings.
The configuration is chosen on validation only (docs/ANOMALY.md); the test figures are
recorded for every row so that nothing tried is hidden.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_core.anomaly import ThresholdTable, score_metrics, shared_backbone, suggest_thresholds
from cxr_core.data import load_images, read_dataset, with_validation_split
from cxr_core.feature_recon import ReconConfig, extract_maps, layer_channels, train_recon
from cxr_core.preprocess import prepare

CACHE_LAYERS = ("1", "2", "3", "4")


def cached_maps(data: str, size: int, out: Path, log=print) -> dict[str, Any]:
    """``{split: (maps float16 (N, 256, G, G), labels (N,))}`` for train_normal, val and test."""
    ds = with_validation_split(read_dataset(data), 0.1, 0)
    splits = {
        "train_normal": [s for s in ds.split("train") if s.label == "NORMAL"],
        "val": ds.split("val"),
        "test": ds.split("test"),
    }
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    bb = shared_backbone("tf_efficientnet_lite0")
    spec = bb.spec(size)
    for name, samples in splits.items():
        key = hashlib.sha1((ds.fingerprint() + name + str(size) + ",".join(CACHE_LAYERS)).encode()).hexdigest()[:16]
        f = out / f"{name}-{size}-{key}.npz"
        if not f.exists():
            t0 = time.perf_counter()
            imgs = load_images(ds, samples, lambda g: prepare(g, spec))
            maps = extract_maps(bb.model, imgs, spec, CACHE_LAYERS).astype(np.float16)
            labels = np.array([s.label == "PNEUMONIA" for s in samples], dtype=np.int8)
            np.savez(f, maps=maps, labels=labels, paths=np.array([s.path for s in samples]))
            log(f"cached {name} @{size}: {maps.shape} in {time.perf_counter() - t0:.0f}s")
        z = np.load(f)
        res[name] = (z["maps"], z["labels"])
    return res


def select(maps: np.ndarray, layers: tuple[str, ...]) -> np.ndarray:
    ch = layer_channels("tf_efficientnet_lite0", CACHE_LAYERS)
    starts = np.cumsum([0, *ch])
    parts = [maps[:, starts[CACHE_LAYERS.index(x)] : starts[CACHE_LAYERS.index(x)] + ch[CACHE_LAYERS.index(x)]]
             for x in layers]
    return np.concatenate(parts, 1).astype(np.float32)


def evaluate(cfg: ReconConfig, data: dict[str, Any], poolings: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Train once; score val and test under every pooling, with and without the per-position error norm."""
    t0 = time.perf_counter()
    tr = select(data["train_normal"][0], cfg.layers)
    det, hist = train_recon(dataclasses.replace(cfg, error_norm=False), tr, log=lambda m: print(m, flush=True))
    t_train = time.perf_counter() - t0
    raw, t_score = {}, {}
    for s in ("val", "test"):
        t1 = time.perf_counter()
        raw[s] = det.error_maps(select(data[s][0], cfg.layers), normalise=False)
        t_score[s] = (time.perf_counter() - t1) / len(raw[s])
    train_mean = det.error_maps(tr, normalise=False).mean(0).clip(1e-6)
    rows = []
    for norm in (False, True):
        maps = {s: raw[s] / train_mean if norm else raw[s] for s in raw}
        for pooling, frac in poolings:
            c = dataclasses.replace(cfg, pooling=pooling, top_fraction=frac, error_norm=norm)
            det.cfg = c
            sc = {s: det.score_maps(maps[s]) for s in maps}
            y = {s: data[s][1] for s in maps}
            th = suggest_thresholds(y["val"], sc["val"])
            m = {s: score_metrics(y[s], sc[s]) for s in sc}
            at = ThresholdTable(y["test"], sc["test"]).metrics(th["threshold"])
            rows.append({
                "config": c.to_dict(),
                "val_auroc": m["val"]["auroc"], "val_aupr": m["val"]["aupr"],
                "test_auroc": m["test"]["auroc"], "test_aupr": m["test"]["aupr"],
                "test_sensitivity": at["sensitivity"], "test_specificity": at["specificity"],
                "threshold": th["threshold"], "final_loss": hist[-1]["loss"],
                "seconds_train": t_train, "ms_per_image_recon": 1000 * t_score["test"],
                "threads": torch.get_num_threads(),
            })
    return rows


def table(path: str) -> str:
    """Every recorded configuration as a markdown table (val and test side by side), in run order."""
    lines = ["| # | network | px | blocks | hidden | patch / bottleneck | epochs | pooling | val AUROC | test AUROC | test AUPR "
             "| test sens / spec at val Youden | train s | recon ms/img | command |",
             "|---:|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for i, line in enumerate(open(path), 1):
        r = json.loads(line)
        c = r["config"]
        pool = ("mean" if c["pooling"] == "mean" else f"top {c['top_fraction']:.0%}") + (
            " ÷ healthy error" if c.get("error_norm") else "")
        lines.append(
            f"| {i} | {c['kind']} | {c['size']} | {','.join(c['layers'])} | {c['hidden']} | "
            f"{c['patch'] if c['kind'] == 'inpaint' else c['bottleneck']} | {c['epochs']} | {pool} | {r['val_auroc']:.3f} | "
            f"{r['test_auroc']:.3f} | {r['test_aupr']:.3f} | {r['test_sensitivity']:.3f} / {r['test_specificity']:.3f} | "
            f"{r['seconds_train']:.0f} | {r['ms_per_image_recon']:.1f} | `{r['command']}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recon_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/kermany-224")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--kind", default="inpaint")
    p.add_argument("--layers", default="2,3,4")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=32)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--mask-ratio", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--region", default="0.1,0.9,0.12,0.88")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="registry-research/_fmaps")
    p.add_argument("--out", default="registry-research/feature_recon.jsonl")
    p.add_argument("--tag", default="")
    p.add_argument("--cache-only", action="store_true")
    p.add_argument("--table", action="store_true", help="print the recorded configurations as markdown and stop")
    ns = p.parse_args(argv)
    if ns.table:
        print(table(ns.out))
        return 0
    torch.set_num_threads(ns.threads)
    data = cached_maps(ns.data, ns.size, Path(ns.cache))
    if ns.cache_only:
        return 0
    cfg = ReconConfig(kind=ns.kind, size=ns.size, layers=tuple(ns.layers.split(",")), hidden=ns.hidden,
                      bottleneck=ns.bottleneck, patch=ns.patch, mask_ratio=ns.mask_ratio, epochs=ns.epochs, lr=ns.lr,
                      seed=ns.seed, region=tuple(float(v) for v in ns.region.split(",")))  # type: ignore[arg-type]
    poolings = [("mean", 0.1), ("top", 0.1), ("top", 0.25)]
    rows = evaluate(cfg, data, poolings)
    cmd = "python -m bench.recon_sweep " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    with open(ns.out, "a") as f:
        for r in rows:
            r.update({"command": cmd, "tag": ns.tag, "date": time.strftime("%Y-%m-%d %H:%M")})
            f.write(json.dumps(r) + "\n")
            c = r["config"]
            print(f"{c['kind']:8} {c['size']} L{''.join(c['layers'])} {c['pooling']}{c['top_fraction'] if c['pooling'] == 'top' else ''}"
                  f"{' norm' if c['error_norm'] else ''}"
                  f" val AUROC {r['val_auroc']:.3f} AUPR {r['val_aupr']:.3f} train {r['seconds_train']:.0f}s"
                  " (test figures are in the jsonl: read them after the configuration is fixed on validation)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
