"""Feature reconstruction training on very few healthy films (tiny registries, quick release builds)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.feature_recon import ReconConfig, train_recon


@pytest.mark.parametrize("n, epochs", [(8, 10), (8, 1), (24, 3), (40, 2)])  # 10, 1, 3 and 4 optimiser steps
def test_any_number_of_steps_trains(n, epochs):
    """torch's one-cycle schedule divides by zero when its warm-up is one step (10 steps at 10 %) or the run is
    one step long; a quick release build (--max-per-split 24, batch 32, 10 epochs) hit the first."""
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(n, 40 + 80, 4, 4)).astype(np.float32)
    cfg = ReconConfig(size=64, layers=("2", "3"), hidden=16, bottleneck=8, epochs=epochs, batch_size=32 if n < 40 else 20)
    det, history = train_recon(cfg, maps)
    assert len(history) == epochs and all(np.isfinite(h["loss"]) for h in history)
    assert np.isfinite(det.score_maps(det.error_maps(maps))).all()
