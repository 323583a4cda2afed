"""The demo registry: synthetic phantoms, both classifiers, their indexes and every detector, on CPU.

What ``python -m train.demo`` and the home page's "Build the demo registry" button run:
generate the synthetic Kermany-layout set (``<registry>/_synthetic``), train the binary and
3-class classifiers on it, index them, and fit the healthy-only detectors and the chest X-ray
guard at reduced sizes. Every entry built here is marked as synthetic demo data.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .anomaly import AEConfig, FeatureConfig
from .detector_training import AnomalyConfig
from .detector_training import run as fit_detectors
from .feature_recon import ReconConfig
from .progress import Progress, labelled
from .reference import IndexConfig, build_index
from .registry import Entry, list_entries, registry_root, update_card, usable
from .synthetic import SyntheticSpec, write_dataset
from .training import TrainConfig, train_classifier


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
    data = demo_data_dir(root)
    if not (data / "manifest.csv").exists():
        if data.exists():
            shutil.rmtree(data)
        write_dataset(data, SyntheticSpec(), progress=labelled(progress, "generate phantoms"))
    return data


def train_demo_classifiers(root: Path, data: Path, cfg: DemoConfig, progress: Progress | None,
                           log: Callable[[str], None]) -> list[Entry]:
    made = []
    for task in ("binary", "multiclass"):
        entry = train_classifier(cfg.train_config(data, task, root), progress=progress, log=log)
        _mark_synthetic(entry)
        made.append(entry)
    return made


def index_step(root: Path, data: Path, classifiers: list[Entry], progress: Progress | None,
               log: Callable[[str], None]) -> list[Entry]:
    """Index every demo classifier on the synthetic set (CPU)."""
    return [build_index(e, data, IndexConfig(device="cpu"), progress, log) for e in classifiers if e.kind == "classifier"]


def detector_step(root: Path, data: Path, classifiers: list[Entry], progress: Progress | None,
                  log: Callable[[str], None]) -> list[Entry]:
    """Every detector on the synthetic set at reduced sizes (one 160 px backbone pass serves the feature
    detectors and the guard; a 64 px autoencoder for 6 epochs; feature reconstruction at 160 px)."""
    cfg = AnomalyConfig(
        data=str(data), out=str(root), detector="all", synthetic=True, notes="synthetic demo",
        ae=AEConfig(size=64, epochs=6, batch_size=16, bn_recalibrate=True), features=FeatureConfig(size=160),
        recon=ReconConfig(size=160, epochs=15, hidden=64, batch_size=16),
        ood_max_train=240,
        ood_features=FeatureConfig(size=160, layers=("4", "6"), pooling="mean"),
    )
    t0 = time.perf_counter()
    made = fit_detectors(cfg, progress, log)
    log(f"anomaly detectors and OOD guard: {len(made)} entries in {time.perf_counter() - t0:.1f}s")
    return made


#: What the demo builds after its classifiers, in order: each ``step(root, data, classifiers, progress, log)``.
DEMO_STEPS: tuple[Callable[..., list[Entry]], ...] = (index_step, detector_step)


def has_usable_classifier(root: Path) -> bool:
    return bool(usable(list_entries(root, check_hashes=False), "classifier"))


def build_demo(root: str | Path | None = None, cfg: DemoConfig | None = None, progress: Progress | None = None,
               log: Callable[[str], None] = print) -> list[Entry]:
    """Build the whole demo registry into ``root``; returns the classifiers."""
    root_p = registry_root(root)
    root_p.mkdir(parents=True, exist_ok=True)
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    data = build_data(root_p, progress)
    log(f"synthetic data in {data} ({time.perf_counter() - t0:.1f}s)")
    classifiers = train_demo_classifiers(root_p, data, cfg, progress, log)
    for step in DEMO_STEPS:
        step(root_p, data, classifiers, progress, log)
    log(f"demo registry built in {root_p} in {time.perf_counter() - t0:.1f}s")
    return classifiers
