"""Shared fixtures: real-data locations (skipped with a reason when absent) and small built registries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two cores, several test processes at times: keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real data {path} is absent (expected ../shared/data/{name} beside the repo)")
    return path


@pytest.fixture(scope="session")
def cxr_mini() -> Path:
    return _shared("cxr-mini")


@pytest.fixture(scope="session")
def kermany224() -> Path:
    return _shared("kermany-224")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout set (deterministic)."""
    from cxr_core.synthetic import SyntheticSpec, write_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(root / "data", SyntheticSpec(n_per_class={"train": 16, "val": 6, "test": 6}, size=128, seed=1))


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, synthetic_data) -> Path:
    """A registry with a binary and a 3-class classifier trained briefly on the synthetic set."""
    from cxr_core.training import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("registry")
    for task in ("binary", "multiclass"):
        train_classifier(
            TrainConfig(
                data=str(synthetic_data), task=task, out=str(root), size=96, epochs=2, batch_size=16,
                tta=2, device="cpu", patience=5, lr=1e-3,
            ),
            log=lambda s: None,
        )
    return root
