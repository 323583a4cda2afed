"""A feature reconstruction detector at the classifiers' input spec takes its feature maps from the
classification pass (``feature_recon.STAGE_HANDOFF``) and scores exactly as with its own backbone pass;
any other detector keeps its own pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cxr_core import feature_recon
from cxr_core.anomaly import LoadedDetector, shared_backbone
from cxr_core.config import InputSpec
from cxr_core.feature_recon import (
    FeatureReconDetector,
    ReconConfig,
    StageHandoff,
    build_network,
    layer_channels,
)
from cxr_core.inference import LoadedClassifier
from cxr_core.predict import Predictor
from tests.test_predict import _classifier, _gray, _perturb, trained_apart_pair

ARCH = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedClassifier, LoadedClassifier]:
    """Two Lite0 classifiers over the pretrained stages (frozen), their last stage and heads 'trained' apart."""
    return trained_apart_pair()


def _detector(size: int, layers: tuple[str, ...] = ("2", "3", "4")) -> LoadedDetector:
    """An untrained distillation detector (random weights, unit statistics): enough to compare two paths."""
    cfg = ReconConfig(size=size, layers=layers, error_norm=False)
    torch.manual_seed(0)
    c = sum(layer_channels(ARCH, layers))
    det = FeatureReconDetector(cfg, build_network(cfg), torch.zeros(c), torch.ones(c))
    spec = shared_backbone(ARCH).spec(size)
    return LoadedDetector(None, f"recon {size}", spec, 1.0, recon=det)  # type: ignore[arg-type]


@pytest.fixture
def handoff(monkeypatch) -> StageHandoff:
    fresh = StageHandoff()
    monkeypatch.setattr(feature_recon, "STAGE_HANDOFF", fresh)
    return fresh


def test_detector_at_the_classifier_spec_reuses_the_classification_pass(pair, handoff):
    binary, multi = pair
    predictor = Predictor({"binary": binary, "multiclass": multi})
    assert set(predictor.handoff_stages.values()) == {1, 2, 3, 4}
    det = _detector(binary.spec.size)
    assert det.spec == binary.spec  # the same prepared image, hence the same key
    for seed in range(2):
        gray = _gray(seed)
        own = det.score(gray)  # nothing offered yet for this image: its own pass
        assert (handoff.taken, handoff.missed) == (seed, seed + 1)
        predictor.predict(gray)
        reused = det.score(gray)
        assert handoff.taken == seed + 1
        assert reused.score == pytest.approx(own.score, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(reused.error_map, own.error_map, rtol=1e-4, atol=1e-5)


def test_other_specs_and_other_trunks_keep_their_own_pass(pair, handoff):
    binary, multi = pair
    predictor = Predictor({"binary": binary, "multiclass": multi})
    gray = _gray(5)
    predictor.predict(gray)
    bigger = _detector(224)
    bigger.score(gray)
    assert (handoff.taken, handoff.missed) == (0, 1)
    # Test-time augmentation runs each network in full: nothing is offered.
    handoff._items.clear()
    predictor.predict(gray, tta=4)
    _detector(binary.spec.size).score(gray)
    assert (handoff.taken, handoff.missed) == (0, 2)
    # A shared trunk that is not the detector's pretrained backbone (block 2 retrained in both) is refused.
    b2, m2 = copy.deepcopy(binary.model), copy.deepcopy(multi.model)
    _perturb(b2.blocks[2], 7)
    m2.blocks[2].load_state_dict(b2.blocks[2].state_dict())
    other = Predictor({"binary": _classifier(b2, "binary", binary.spec), "multiclass": _classifier(m2, "multiclass", multi.spec)})
    assert other.trunk_depth == 6
    other.predict(gray)
    det = _detector(binary.spec.size, layers=("2", "3"))
    out = det.score(gray)
    assert (handoff.taken, handoff.missed) == (0, 3)
    handoff._items.clear()
    assert det.score(gray).score == pytest.approx(out.score, rel=1e-6)
    # Taps only up to block 1 are still the pretrained ones there: taken.
    _detector(binary.spec.size, layers=("1",)).score(gray)
    assert handoff.taken == 0  # cleared above: nothing to take
    other.predict(gray)
    _detector(binary.spec.size, layers=("1",)).score(gray)
    assert handoff.taken == 1


def test_single_classifier_offers_nothing(pair, handoff):
    binary, _ = pair
    predictor = Predictor({"binary": binary})
    assert predictor.trunk_depth == 0 and predictor.handoff_stages == {}
    gray = _gray(1)
    predictor.predict(gray)
    _detector(binary.spec.size).score(gray)
    assert (handoff.taken, handoff.missed) == (0, 1)


def test_the_spec_is_part_of_the_key():
    x = np.zeros((1, 160, 160), np.uint8)
    a = StageHandoff.key(x, InputSpec(size=160), ARCH)
    assert a == StageHandoff.key(x.copy(), InputSpec(size=160), ARCH)
    assert a != StageHandoff.key(x, InputSpec(size=160, clahe=True), ARCH)
    assert a != StageHandoff.key(x + 1, InputSpec(size=160), ARCH)
