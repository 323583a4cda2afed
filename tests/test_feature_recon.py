"""Feature reconstruction detectors (cxr_core.feature_recon) on synthetic feature maps and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_core.feature_recon import (
    FeatureReconDetector,
    ReconConfig,
    partition_masks,
    peak_in_mask,
    pool_maps,
    random_patch_mask,
    region_grid,
    train_recon,
    upsample_map,
)

C = 40 + 80  # blocks 2 and 3 of Lite0


def _fields(n: int, g: int = 8, seed: int = 0) -> np.ndarray:
    """Healthy 'feature maps': smooth low-rank fields shared across channels, plus a little noise."""
    fixed = np.random.default_rng(1234)  # the healthy distribution: the same for every seed
    basis = fixed.normal(size=(4, C, 1, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:g, 0:g] / g
    waves = np.stack([np.sin(2 * np.pi * (yy + p)) * np.cos(2 * np.pi * (xx + q))
                      for p, q in fixed.uniform(0, 1, size=(4, 2))]).astype(np.float32)
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(n, 4, 1, 1, 1)).astype(np.float32)
    x = (coef * basis[None] * waves[None, :, None]).sum(1)
    return x + 0.1 * rng.normal(size=x.shape).astype(np.float32)


def _with_lesion(x: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A local blob of an unseen channel pattern at a random inner position; returns maps and masks."""
    rng = np.random.default_rng(seed)
    out, masks = x.copy(), np.zeros((len(x), x.shape[-2], x.shape[-1]), bool)
    pattern = rng.normal(size=(C,)).astype(np.float32) * 3
    for i in range(len(x)):
        r, c = rng.integers(2, x.shape[-1] - 3, size=2)
        out[i, :, r : r + 2, c : c + 2] += pattern[:, None, None]
        masks[i, r : r + 2, c : c + 2] = True
    return out, masks


def test_config_round_trip_and_validation():
    cfg = ReconConfig(kind="distill", layers=("2", "3"), region=(0.0, 1.0, 0.0, 1.0), pooling="top")
    assert ReconConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(kind="vae"), dict(pooling="max"), dict(layers=("6",)), dict(size=100)):
        with pytest.raises(ValueError):
            ReconConfig(**bad).validate()


def test_partition_masks_hide_every_position_exactly_once():
    for g, patch in ((14, 2), (10, 2), (7, 1), (8, 3)):
        m = partition_masks(g, patch)
        assert m.shape == (4, 1, g, g)
        assert torch.equal(m.sum(0)[0], torch.ones(g, g))
    gen = torch.Generator().manual_seed(0)
    r = random_patch_mask(64, 14, 2, 0.5, gen)
    assert r.shape == (64, 1, 14, 14) and 0.4 < float(r.mean()) < 0.6


def test_pooling_and_region():
    g = 10
    box = region_grid(g, (0.2, 0.8, 0.2, 0.8))
    assert box.sum() == 36 and not box[0].any()
    maps = torch.zeros(2, g, g)
    maps[1, 0, 0] = 100.0  # outside the box: never counted
    maps[1, 5, 5] = 36.0
    cfg = ReconConfig(region=(0.2, 0.8, 0.2, 0.8))
    assert pool_maps(cfg, maps).tolist() == [0.0, 1.0]
    cfg.pooling, cfg.top_fraction = "top", 1 / 36
    assert pool_maps(cfg, maps).tolist() == [0.0, 36.0]


@pytest.mark.parametrize("kind", ["inpaint", "distill"])
def test_detector_flags_local_anomalies_and_points_at_them(kind):
    torch.set_num_threads(1)
    train = _fields(160)
    normal = _fields(40, seed=5)
    sick, masks = _with_lesion(_fields(40, seed=6))
    cfg = ReconConfig(kind=kind, size=128, layers=("2", "3"), hidden=32, bottleneck=8, epochs=15, batch_size=16,
                      lr=3e-3, region=(0.0, 1.0, 0.0, 1.0), pooling="top", top_fraction=0.1,
                      error_norm=False)
    det, history = train_recon(cfg, train)
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]
    e_normal, e_sick = det.error_maps(normal), det.error_maps(sick)
    assert e_sick.shape == (40, 8, 8)
    y = np.r_[np.zeros(40), np.ones(40)]
    auroc = roc_auc_score(y, np.r_[det.score_maps(e_normal), det.score_maps(e_sick)])
    assert auroc > 0.9, auroc
    hits = np.mean([peak_in_mask(e, m) for e, m in zip(e_sick, masks, strict=True)])
    assert hits > 0.7, hits
    # Round trip through the stored tensors (safetensors-ready: plain tensors, no pickle).
    again = FeatureReconDetector.from_tensors(ReconConfig.from_dict(cfg.to_dict()), det.tensors())
    np.testing.assert_allclose(again.error_maps(sick[:4]), e_sick[:4], rtol=1e-5, atol=1e-6)


def test_untrained_detector_does_not_separate():
    """The AUROC bar above is not met by construction: an untrained network scores at about chance."""
    torch.set_num_threads(1)
    cfg = ReconConfig(kind="inpaint", size=128, layers=("2", "3"), hidden=32, epochs=0,
                      region=(0.0, 1.0, 0.0, 1.0))
    det, _ = train_recon(cfg, _fields(40))
    normal, (sick, _) = _fields(40, seed=5), _with_lesion(_fields(40, seed=6))
    y = np.r_[np.zeros(40), np.ones(40)]
    auroc = roc_auc_score(y, np.r_[det.score_maps(det.error_maps(normal)), det.score_maps(det.error_maps(sick))])
    assert auroc < 0.9


def test_upsample_map_keeps_the_peak():
    e = np.zeros((7, 7), np.float32)
    e[2, 5] = 1.0
    big = upsample_map(e, 224)
    assert big.shape == (224, 224)
    r, c = np.unravel_index(int(np.argmax(big)), big.shape)
    assert r // 32 == 2 and c // 32 == 5
    mask = np.zeros((224, 224), bool)
    mask[64:96, 160:192] = True
    assert peak_in_mask(e, mask) and not peak_in_mask(e, ~mask)


def test_error_norm_divides_by_the_healthy_mean_and_travels_with_the_weights():
    torch.set_num_threads(1)
    cfg = ReconConfig(kind="inpaint", size=128, layers=("2", "3"), hidden=16, epochs=1, error_norm=True,
                      region=(0.0, 1.0, 0.0, 1.0))
    train = _fields(32)
    det, _ = train_recon(cfg, train)
    assert det.error_mean is not None and det.error_mean.shape == (8, 8)
    raw = det.error_maps(train, normalise=False)
    np.testing.assert_allclose(det.error_maps(train), raw / det.error_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(det.error_maps(train).mean(0), np.ones((8, 8)), rtol=1e-4)
    again = FeatureReconDetector.from_tensors(cfg, det.tensors())
    np.testing.assert_allclose(again.error_maps(train[:3]), det.error_maps(train[:3]), rtol=1e-5)
    with pytest.raises(ValueError):
        FeatureReconDetector(cfg, det.net, det.mean.flatten(), det.std.flatten()).error_maps(train[:1])
