"""Shared fixtures: real-data locations (skipped with a reason when absent) and small built registries.

The CI policy lives here too: :func:`missing_dependency` skips a test with its reason locally, but
in CI (``CI`` set and not false) it fails the test with that reason, so a green CI run cannot hide a
missing chromium, playwright, tifffile, JPEG 2000 codec or ``../shared/data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two cores, several test processes at times: keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but empty/0/false/no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing_dependency(reason: str) -> NoReturn:
    """Skip the test because a dependency is missing; in CI, fail it instead, naming the dependency.

    Only for "this machine lacks X" skips (chromium, playwright, tifffile, Pillow's JPEG 2000 codec,
    the shared real data): a test that does not apply for another reason skips with ``pytest.skip``.
    """
    if in_ci():
        pytest.fail(f"CI must not skip on a missing dependency: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_data_missing_reason(name: str) -> str | None:
    """Why ``$CXR_SHARED_DATA/<name>`` (default ``../shared/data/<name>``) cannot be used, or None."""
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        return f"real data {path} is absent (expected ../shared/data/{name} beside the repo, or $CXR_SHARED_DATA)"
    return None


def _shared(name: str) -> Path:
    reason = shared_data_missing_reason(name)
    if reason:
        missing_dependency(reason)
    return SHARED_DATA / name


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
    """A registry with a binary and a 3-class classifier trained briefly on the synthetic set.

    For quick iterations, ``CXR_TEST_TINY_REGISTRY`` names a registry built earlier by this recipe;
    the fixture then returns a copy of it instead of training (as the browser fixtures do).
    """
    import shutil

    from cxr_core.training import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("registry")
    prebuilt = os.environ.get("CXR_TEST_TINY_REGISTRY")
    if prebuilt:
        shutil.copytree(prebuilt, root, dirs_exist_ok=True)
        return root
    for task in ("binary", "multiclass"):
        train_classifier(
            TrainConfig(
                data=str(synthetic_data), task=task, out=str(root), size=96, epochs=2, batch_size=16,
                tta=2, device="cpu", patience=5, lr=1e-3,
            ),
            log=lambda s: None,
        )
    return root
