"""Build the demo registry from synthetic phantoms, on CPU, in a few minutes.

    python -m train.demo            # build into $CXR_REGISTRY or ./registry
    python -m train.demo --if-missing   # do nothing when a usable classifier exists

Generates the synthetic Kaggle-layout set (``<registry>/_synthetic``), trains the
binary and 3-class classifiers on it, and runs every further demo step registered
in ``DEMO_STEPS`` (index, anomaly detectors, ...). The UI labels every entry built
here as synthetic demo data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_core.progress import Progress
from cxr_core.registry import Entry, list_entries, registry_root, update_card, usable

if TYPE_CHECKING:
    from cxr_core.training import TrainConfig



@dataclass
class DemoConfig:
    """Small enough for a 2-core CPU in a few minutes, big enough to show every page."""

    size: int = 160
    epochs: int = 8
    batch_size: int = 32
    architecture: str = "tf_efficientnet_lite0"
    seed: int = 0
    #: 45 validation images saturate AUROC early; the log-loss still tells the epochs apart.
    selection: str = "log_loss"

    def train_config(self, data: Path | str, task: str, out: Path | str, **overrides: Any) -> TrainConfig:
        """The demo's recipe for one task as a ``TrainConfig`` (benchmarks and tests override e.g. ``tta``)."""
        from cxr_core.training import TrainConfig

        kw: dict[str, Any] = dict(
            data=str(data), task=task, out=str(out), architecture=self.architecture, pretrained=True,
            epochs=self.epochs, batch_size=self.batch_size, size=self.size, lr=1e-3, tta=2, patience=self.epochs,
            device="cpu", seed=self.seed, selection=self.selection, notes="synthetic demo",
        )
        return TrainConfig(**{**kw, **overrides})


def demo_data_dir(root: Path) -> Path:
    return root / "_synthetic"


def _mark_synthetic(entry: Entry) -> None:
    update_card(entry, lambda c: c["dataset"].update({"synthetic": True, "name": "synthetic-demo"}))


def build_data(root: Path, progress: Progress | None = None) -> Path:
    from cxr_core.synthetic import SyntheticSpec, write_dataset

    data = demo_data_dir(root)
    if not (data / "manifest.csv").exists():
        if data.exists():
            shutil.rmtree(data)
        write_dataset(data, SyntheticSpec(), progress=(lambda i, n: progress("generate phantoms", i, n)) if progress else None)
    return data


def train_demo_classifiers(root: Path, data: Path, cfg: DemoConfig, progress: Progress | None, log: Callable[[str], None]) -> list[Entry]:
    from cxr_core.training import train_classifier

    made = []
    for task in ("binary", "multiclass"):
        entry = train_classifier(cfg.train_config(data, task, root), progress=progress, log=log)
        _mark_synthetic(entry)
        made.append(entry)
    return made


#: Further demo steps, each ``step(root, data, classifiers, progress, log)``; other
#: capabilities (index, anomaly) append themselves here.
DEMO_STEPS: list[Callable[..., object]] = []


def _load_steps() -> None:
    """Import the optional steps so that they register (a missing one is not fatal)."""
    for mod in ("train.index", "train.anomaly"):
        try:
            m = __import__(mod, fromlist=["demo_step"])
        except ImportError:
            continue
        step = getattr(m, "demo_step", None)
        if step is not None and step not in DEMO_STEPS:
            DEMO_STEPS.append(step)


def has_usable_classifier(root: Path) -> bool:
    return bool(usable(list_entries(root, check_hashes=False), "classifier"))


def build_demo(root: str | Path | None = None, cfg: DemoConfig | None = None, progress: Progress | None = None, log: Callable[[str], None] = print) -> list[Entry]:
    root_p = registry_root(root)
    root_p.mkdir(parents=True, exist_ok=True)
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    data = build_data(root_p, progress)
    log(f"synthetic data in {data} ({time.perf_counter() - t0:.1f}s)")
    classifiers = train_demo_classifiers(root_p, data, cfg, progress, log)
    _load_steps()
    for step in DEMO_STEPS:
        step(root_p, data, classifiers, progress, log)
    log(f"demo registry built in {root_p} in {time.perf_counter() - t0:.1f}s")
    return classifiers


def main(argv: list[str] | None = None) -> int:
    from ._cli import tqdm_progress

    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--if-missing", action="store_true", help="skip when the registry already has a usable classifier")
    p.add_argument("--epochs", type=int, default=DemoConfig.epochs)
    ns = p.parse_args(argv)
    root = registry_root(ns.out)
    if ns.if_missing and has_usable_classifier(root):
        print(f"registry {root} already has a classifier; not rebuilding the demo")
        return 0
    progress, close = tqdm_progress()
    try:
        build_demo(root, DemoConfig(epochs=ns.epochs), progress)
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
