"""Predictor: one pass through the trunk that two frozen-trunk classifiers share gives their own answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cxr_core.config import InputSpec
from cxr_core.inference import LoadedClassifier
from cxr_core.models import create_model
from cxr_core.predict import Predictor, shared_trunk_depth
from cxr_core.registry import Entry


def _classifier(model: torch.nn.Module, task: str, spec: InputSpec, arch: str = "tf_efficientnet_lite0") -> LoadedClassifier:
    classes = ["NORMAL", "PNEUMONIA"] if task == "binary" else ["NORMAL", "BACTERIA", "VIRUS"]
    card = {"kind": "classifier", "architecture": arch, "task": task, "classes": classes, "input": spec.to_dict()}
    entry = Entry(f"classifier-{task}-test", None, card)  # type: ignore[arg-type]
    model = model.eval().to(memory_format=torch.channels_last)
    return LoadedClassifier(entry, model, spec, task, classes, 0.5)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def trained_apart_pair() -> tuple[LoadedClassifier, LoadedClassifier]:
    """Two Lite0 classifiers from the same pretrained weights whose last stage and heads were 'trained' apart."""
    torch.manual_seed(0)
    binary, info = create_model("tf_efficientnet_lite0", 1, pretrained=True)
    multi, _ = create_model("tf_efficientnet_lite0", 3, pretrained=True)
    for m, seed in ((binary, 1), (multi, 2)):
        _perturb(m.blocks[6], seed)
        _perturb(m.conv_head, seed)
        _perturb(m.classifier, seed)
    spec = InputSpec(size=160, mean=info.mean, std=info.std)
    return _classifier(binary, "binary", spec), _classifier(multi, "multiclass", spec)


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedClassifier, LoadedClassifier]:
    return trained_apart_pair()


def _gray(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:300, :380]
    return np.clip(120 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0) + rng.normal(0, 20, (300, 380)), 0, 255).astype(np.uint8)


def test_shared_trunk_gives_each_model_its_own_answer(pair):
    binary, multi = pair
    assert shared_trunk_depth(binary, multi) == 6  # stem + blocks 0-5 are the pretrained ones in both
    shared = Predictor({"binary": binary, "multiclass": multi})
    assert shared.trunk_depth == 6
    separate = Predictor({"binary": binary, "multiclass": multi})
    separate.trunk_depth = 0
    for seed in range(3):
        gray = _gray(seed)
        a, b = shared.predict(gray), separate.predict(gray)
        assert "classify_shared_trunk" in a.timings and "classify_shared_trunk" not in b.timings
        for task in ("binary", "multiclass"):
            np.testing.assert_allclose(a.results[task].probs, b.results[task].probs, atol=1e-5)
            assert a.results[task].label == b.results[task].label
            assert sorted(a.feature_maps[task]) == sorted(b.feature_maps[task]) == ["blocks.4", "bn2"]
            for layer in ("blocks.4", "bn2"):
                torch.testing.assert_close(a.feature_maps[task][layer], b.feature_maps[task][layer], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
    # Test-time augmentation takes the separate path and still answers.
    assert shared.predict(_gray(0), tta=4).results["multiclass"].tta == 4


def test_depth_stops_at_the_first_stage_that_differs(pair):
    binary, multi = pair
    other = copy.deepcopy(multi.model)
    _perturb(other.blocks[2], 3)
    assert shared_trunk_depth(binary, _classifier(other, "multiclass", multi.spec)) == 2
    _perturb(other.conv_stem, 4)
    assert shared_trunk_depth(binary, _classifier(other, "multiclass", multi.spec)) == 0
    bigger = InputSpec(size=224, mean=multi.spec.mean, std=multi.spec.std)
    assert shared_trunk_depth(binary, _classifier(multi.model, "multiclass", bigger)) == 0
    assert Predictor({"binary": binary}).trunk_depth == 0
