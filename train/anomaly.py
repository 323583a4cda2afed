"""Fit healthy-only anomaly detectors and the out-of-distribution guard into the registry.

    python -m train.anomaly --data ../shared/data/kermany-224 --out registry-kermany
    python -m train.anomaly --data DIR --detector autoencoder --ae-loss mse+ssim --ae-epochs 20

Every detector sees NORMAL images of the training split only (the validation split
is drawn from train/ by patient, as for the classifiers). Each writes one registry
entry with per-image scores on val and test (``scores.npz``), AUROC/AUPR per split,
score histograms and threshold suggestions chosen on validation. ``--detector ood``
fits the guard that tells whether an upload looks like a chest X-ray at all (on
every training CXR, normal and pneumonia).
"""

from __future__ import annotations

import argparse
import sys

from cxr_core.anomaly import AE_LOSSES, AEConfig, FeatureConfig
from cxr_core.detector_training import DETECTORS, AnomalyConfig, run
from cxr_core.feature_recon import RECON_KINDS, ReconConfig
from cxr_core.registry import registry_root


def parse_args(argv: list[str] | None = None) -> AnomalyConfig:
    a, f = AEConfig(), FeatureConfig()
    p = argparse.ArgumentParser(prog="python -m train.anomaly", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root: Kermany layout, class folders or a manifest.csv")
    p.add_argument("--out", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--detector", choices=DETECTORS, default="all")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (autoencoder training)")
    p.add_argument("--max-per-split", type=int, default=None, help="cap images per split (quick runs)")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument("--normal-quantile", type=float, default=0.95, help="quantile of healthy val scores (fallback threshold)")
    p.add_argument("--ae-size", type=int, default=a.size)
    p.add_argument("--ae-epochs", type=int, default=a.epochs)
    p.add_argument("--ae-batch-size", type=int, default=a.batch_size)
    p.add_argument("--ae-lr", type=float, default=a.lr)
    p.add_argument("--ae-latent", type=int, default=a.latent)
    p.add_argument("--ae-loss", choices=AE_LOSSES, default=a.loss)
    p.add_argument("--ae-region", default=",".join(str(v) for v in a.region),
                   help="scored box top,bottom,left,right as fractions; 0,1,0,1 = whole image")
    p.add_argument("--feature-methods", default="mahalanobis,knn")
    p.add_argument("--feature-size", type=int, default=f.size)
    p.add_argument("--layers", default=",".join(f.layers), help="EfficientNet-Lite blocks 0-6 and/or 'head'")
    p.add_argument("--pooling", choices=["mean", "meanstd"], default=f.pooling)
    p.add_argument("--k", type=int, default=f.k)
    r = ReconConfig()
    p.add_argument("--recon-kinds", default=",".join(AnomalyConfig.recon_kinds),
                   help=f"feature reconstruction networks, some of {','.join(RECON_KINDS)}")
    p.add_argument("--recon-size", type=int, default=r.size)
    p.add_argument("--recon-layers", default=",".join(r.layers), help="EfficientNet-Lite blocks 1-4")
    p.add_argument("--recon-epochs", type=int, default=r.epochs)
    p.add_argument("--recon-hidden", type=int, default=r.hidden, help="channels of the network (a multiple of 8)")
    p.add_argument("--recon-bottleneck", type=int, default=r.bottleneck, help="distill: channels at stride 32")
    p.add_argument("--recon-patch", type=int, default=r.patch, help="inpaint: side of the hidden patches")
    p.add_argument("--recon-error-norm", action=argparse.BooleanOptionalAction, default=r.error_norm,
                   help="divide each position's error by its healthy training mean before pooling")
    p.add_argument("--recon-pooling", choices=["mean", "top"], default=r.pooling)
    p.add_argument("--recon-top-fraction", type=float, default=r.top_fraction)
    p.add_argument("--ood-quantile", type=float, default=0.995)
    p.add_argument("--ood-margin", type=float, default=1.5, help="guard threshold = margin x the quantile")
    p.add_argument("--ood-max-train", type=int, default=1500)
    p.add_argument("--notes", default="")
    p.add_argument("--normal-class", default=None,
                   help="the healthy class detectors learn (default: NORMAL in the Kermany layout, else a class named normal)")
    ns = p.parse_args(argv)
    region = tuple(float(v) for v in ns.ae_region.split(","))
    if len(region) != 4:
        p.error("--ae-region needs four numbers")
    ae = AEConfig(size=ns.ae_size, epochs=ns.ae_epochs, batch_size=ns.ae_batch_size, lr=ns.ae_lr, latent=ns.ae_latent,
                  loss=ns.ae_loss, region=region)  # type: ignore[arg-type]
    fc = FeatureConfig(size=ns.feature_size, layers=tuple(x.strip() for x in ns.layers.split(",") if x.strip()),
                       pooling=ns.pooling, k=ns.k)
    return AnomalyConfig(
        data=ns.data, out=ns.out, detector=ns.detector, val_fraction=ns.val_fraction, seed=ns.seed, device=ns.device,
        max_per_split=ns.max_per_split, target_sensitivity=ns.target_sensitivity, normal_quantile=ns.normal_quantile,
        ae=ae, features=fc, feature_methods=tuple(x.strip() for x in ns.feature_methods.split(",") if x.strip()),
        recon_kinds=tuple(x.strip() for x in ns.recon_kinds.split(",") if x.strip()),
        recon=ReconConfig(size=ns.recon_size, layers=tuple(x.strip() for x in ns.recon_layers.split(",") if x.strip()),
                          epochs=ns.recon_epochs, pooling=ns.recon_pooling, top_fraction=ns.recon_top_fraction,
                          hidden=ns.recon_hidden, bottleneck=ns.recon_bottleneck, patch=ns.recon_patch,
                          error_norm=ns.recon_error_norm),
        ood_quantile=ns.ood_quantile, ood_margin=ns.ood_margin, ood_max_train=ns.ood_max_train, notes=ns.notes,
        normal_class=ns.normal_class,
    )


def main(argv: list[str] | None = None) -> int:
    from ._cli import tqdm_progress

    cfg = parse_args(argv)
    progress, close = tqdm_progress()
    try:
        made = run(cfg, progress, print)
    except (ValueError, FileNotFoundError) as e:
        close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    close()
    print(f"\nregistered {len(made)} entries in {registry_root(cfg.out)}:")
    for e in made:
        print(f"  {e.id}  ({e.info.label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
