"""Train a classifier and write it to the registry.

    python -m train.classifier --data ../shared/data/kermany-224 --task binary --out registry

Selects the epoch on a patient-level validation split taken from train/, evaluates
on the dataset's test split (plain and TTA) and prints the metrics.
"""

from __future__ import annotations

import argparse
import sys

from cxr_core.config import AugmentConfig
from cxr_core.training import (
    BALANCE_CHOICES,
    OPERATING_POINTS,
    RECIPE_NOTES,
    RECIPES,
    SELECTIONS,
    TrainConfig,
    train_classifier,
)

from ._cli import fmt_metrics, tqdm_progress


def recipes_help() -> str:
    """The named presets of ``--recipe`` with their settings (the help's epilog)."""
    lines = ["recipes (--recipe NAME sets these defaults; any flag given as well overrides them):"]
    for name, fields in RECIPES.items():
        lines.append(f"  {name}: " + " ".join(f"{k}={v}" for k, v in fields.items()))
        if RECIPE_NOTES.get(name):
            lines.append(f"      {RECIPE_NOTES[name]}")
    return "\n".join(lines)


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``python -m train.classifier`` (every TrainConfig field has a flag).

    With ``recipe``, the flags' defaults are that preset's (``cxr_core.training.RECIPES``).
    """
    from cxr_core.models import ARCHITECTURES

    d = TrainConfig.from_recipe(recipe, data="") if recipe else TrainConfig(data="")
    p = argparse.ArgumentParser(prog="python -m train.classifier", description=__doc__, epilog=recipes_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="dataset root: the Kermany layout, class folders ROOT/[train|val|test/]CLASS/*, or a manifest.csv")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=recipe,
                   help="start from a named preset (listed below); flags given as well override it")
    p.add_argument("--task", default="auto",
                   help="Kermany layout: binary or multiclass (auto = binary); other layouts: their one task, named after "
                        "the dataset folder (auto picks it)")
    p.add_argument("--normal-class", default=d.normal_class,
                   help="the healthy class (default: a class named normal in any case); anomaly detection learns it")
    p.add_argument("--out", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--arch", dest="architecture", choices=ARCHITECTURES, default=d.architecture)
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random initialisation")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=["adamw", "rmsprop"], default=d.optimizer)
    p.add_argument("--schedule", choices=["cosine", "exponential", "none"], default=d.schedule)
    p.add_argument("--gamma", type=float, default=d.gamma, help="per-epoch decay for --schedule exponential")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--balance", choices=BALANCE_CHOICES, default=d.balance)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping patience in epochs")
    p.add_argument("--selection", choices=SELECTIONS, default=d.selection,
                   help="what picks the saved epoch: score (val AUROC / accuracy, log-loss on ties) or log_loss")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tta", type=int, default=d.tta, help="test-time views reported beside plain results (1 = off)")
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--clahe", action="store_true", help="CLAHE contrast equalisation in preprocessing")
    p.add_argument("--crop-fraction", type=float, default=d.crop_fraction, help="centre crop kept (1.0 = whole image)")
    p.add_argument("--mask-letters", action="store_true", default=d.mask_letters,
                   help="paint burnt-in letters over before anything else (a shortcut lever, docs/RESULTS.md)")
    p.add_argument("--mask-border", type=float, default=d.mask_border,
                   help="replace this fraction of each film edge by its inner neighbour (0 = off)")
    p.add_argument("--hist-match", action="store_true", default=d.hist_match,
                   help="match each film's grey histogram to the train split's mean one (stored in the card)")
    p.add_argument("--no-augment", action="store_true")
    a = d.augment
    p.add_argument("--rotate", type=float, default=a.rotate_deg)
    p.add_argument("--shift", type=float, default=a.shift)
    p.add_argument("--zoom", type=float, default=a.zoom)
    p.add_argument("--contrast", type=float, default=a.contrast)
    p.add_argument("--brightness", type=float, default=a.brightness)
    p.add_argument("--freeze-stages", type=int, default=d.freeze_stages,
                   help="keep the first N backbone stages at their pretrained weights and train the rest on "
                        "cached features (CPU budget mode; 0 = fine-tune everything)")
    p.add_argument("--train-views", type=int, default=d.train_views,
                   help="augmented views per training image cached with --freeze-stages (view 0 is the plain image)")
    p.add_argument("--feature-cache", default=d.feature_cache, help="folder keeping frozen-stage features between runs")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--operating-point", choices=OPERATING_POINTS, default=d.operating_point,
                   help="binary: the validation-chosen threshold the card puts in use (all are stored)")
    p.add_argument("--lung-focus-films", type=int, default=d.lung_focus_films,
                   help="official-test films on which the HiResCAM peak/mass inside the lung box is measured (0 = skip)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-per-split", type=int, default=None, help="cap images per split (quick CPU runs)")
    p.add_argument("--entry-id", default=None)
    p.add_argument("--notes", default=d.notes)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=sorted(RECIPES), default=None)
    known, _ = pre.parse_known_args(argv)
    p = build_parser(known.recipe)
    ns = p.parse_args(argv)
    base = TrainConfig.from_recipe(ns.recipe, data="").augment if ns.recipe else AugmentConfig()
    aug = AugmentConfig(
        rotate_deg=ns.rotate, shift=ns.shift, zoom=ns.zoom, contrast=ns.contrast, brightness=ns.brightness,
        enabled=base.enabled and not ns.no_augment,
    )
    kw = {k: v for k, v in vars(ns).items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**kw, augment=aug)
    try:
        cfg.validate()
    except ValueError as e:
        p.error(str(e))
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    progress, close = tqdm_progress()
    try:
        entry = train_classifier(cfg, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    close()
    if entry is None:  # non-zero rank under torchrun
        return 0
    card = entry.classifier_card
    print(f"\nregistered {entry.id} in {entry.path.parent}")
    for key, m in card.metrics.items():
        print(f"  {str(key):>26}: {fmt_metrics(m)}")
    t = card.training
    print(f"  trained {t['epochs_run']} epochs (best {t['best_epoch']}) in {t['seconds_total']:.1f}s on {t['device']}, {t['images_per_second']:.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
