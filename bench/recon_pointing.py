"""Pointing game for feature reconstruction anomaly maps on synthetic phantoms with lesion masks.

    python -m bench.recon_pointing --threads 2
    python -m bench.recon_pointing --kind distill --n-train 300 --epochs 30

A feature reconstruction detector (``cxr_core.feature_recon``) is trained on ``--n-train``
NORMAL phantoms (``synthetic.make_phantom``, seeds 0..n-1) and scores ``--n-test`` normal,
bacterial and viral phantoms each (seeds from 10,000, unseen). For every pneumonia phantom the
error map's peak is a hit when it lies inside the lesion mask as drawn, and "tolerant" when it
lies within 15 px (224-px scale) of it, as docs/GRADCAM.md scores class activation maps. Also
prints the phantoms' AUROC (normal vs pneumonia) and the chance rates (a random point inside the
scored box; the centre of the image).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def phantoms(subtype: str, seeds: range, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from cxr_core.synthetic import make_phantom

    imgs, masks = [], []
    for s in seeds:
        p = make_phantom(subtype, s)
        imgs.append(np.asarray(Image.fromarray(p.image).resize((size, size), Image.BILINEAR)))
        masks.append(np.asarray(Image.fromarray(p.lesion_mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0)
    return np.stack(imgs), np.stack(masks)


def main(argv: list[str] | None = None) -> int:
    from scipy import ndimage
    from sklearn.metrics import roc_auc_score

    from cxr_core.anomaly import shared_backbone
    from cxr_core.feature_recon import ReconConfig, extract_maps, region_grid, train_recon, upsample_map

    p = argparse.ArgumentParser(prog="python -m bench.recon_pointing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="inpaint")
    p.add_argument("--layers", default="2,3,4")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-test", type=int, default=60)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=32)
    p.add_argument("--error-norm", action="store_true")
    p.add_argument("--tolerance", type=int, default=15, help="px at 224-px scale")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    t0 = time.perf_counter()
    bb = shared_backbone("tf_efficientnet_lite0")
    spec = bb.spec(ns.size)
    cfg = ReconConfig(kind=ns.kind, size=ns.size, layers=tuple(ns.layers.split(",")), epochs=ns.epochs,
                      pooling=ns.pooling, hidden=ns.hidden, bottleneck=ns.bottleneck, error_norm=ns.error_norm)
    train_u8, _ = phantoms("normal", range(ns.n_train), ns.size)
    det, _ = train_recon(cfg, extract_maps(bb.model, train_u8, spec, cfg.layers))
    test = {st: phantoms(st, range(10_000, 10_000 + ns.n_test), ns.size) for st in ("normal", "bacteria", "virus")}
    err = {st: det.error_maps(extract_maps(bb.model, test[st][0], spec, cfg.layers)) for st in test}
    scores = {st: det.score_maps(err[st]) for st in err}
    y = np.r_[np.zeros(ns.n_test), np.ones(2 * ns.n_test)]
    auroc = float(roc_auc_score(y, np.r_[scores["normal"], scores["bacteria"], scores["virus"]]))
    tol = round(ns.tolerance * ns.size / 224)
    box = upsample_map(region_grid(err["normal"].shape[-1], cfg.region).float().numpy(), ns.size) > 0.5
    res: dict[str, dict[str, float]] = {}
    for st in ("bacteria", "virus"):
        strict = tolerant = chance = 0
        centre = 0
        for e, m in zip(err[st], test[st][1], strict=True):
            big = upsample_map(e, ns.size)
            big[~box] = -np.inf  # the score pools over the box: its peak is looked for there too
            r, c = np.unravel_index(int(np.argmax(big)), big.shape)
            strict += bool(m[r, c])
            tolerant += bool(ndimage.binary_dilation(m, iterations=tol)[r, c]) if tol else bool(m[r, c])
            chance += float(m[box].mean())
            centre += bool(m[ns.size // 2, ns.size // 2])
        n = len(err[st])
        res[st] = {"strict": strict / n, "tolerant": tolerant / n, "chance_random_point_in_box": chance / n,
                   "centre": centre / n, "n": n}
    out = {"config": cfg.to_dict(), "n_train": ns.n_train, "n_test_per_subtype": ns.n_test, "auroc": auroc,
           "pointing": res, "seconds": time.perf_counter() - t0}
    print(json.dumps(out, indent=1))
    if ns.json:
        with open(ns.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
