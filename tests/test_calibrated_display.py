"""The app shows temperature-scaled probabilities (issue 14): same decisions, the card's temperature, a reliability diagram."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.calibration import apply_temperature, reliability_by_split
from cxr_core.predict import TaskResult

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "release" / "kermany-224"


@pytest.mark.parametrize("p", [0.05, 0.3, 0.49, 0.51, 0.62, 0.97])
@pytest.mark.parametrize("temperature", [0.45, 1.0, 2.5])
def test_shown_probabilities_keep_every_binary_decision(p: float, temperature: float) -> None:
    res = TaskResult("binary", "e", ["NORMAL", "PNEUMONIA"], [1 - p, p], "?", 0.0, 0.6, 1, temperature, "youden_val")
    shown = res.shown
    assert shown == pytest.approx(apply_temperature(np.array([[1 - p, p]]), "binary", temperature)[0].tolist())
    assert (shown[1] >= res.shown_threshold) == (p >= 0.6)
    assert sum(shown) == pytest.approx(1.0)


def test_shown_probabilities_keep_the_multiclass_argmax() -> None:
    probs = [0.2, 0.5, 0.3]
    res = TaskResult("multiclass", "e", ["normal", "bacteria", "virus"], probs, "bacteria", 0.0, 0.5, 1, 3.0)
    assert int(np.argmax(res.shown)) == 1 and res.shown[1] < 0.5  # T > 1 softens, never reorders
    assert list(res.as_dict) == res.classes and res.as_dict["bacteria"] == res.shown[1]


def test_reliability_by_split_from_stored_probabilities() -> None:
    rng = np.random.default_rng(0)
    p1 = rng.random(200)
    probs, y = np.stack([1 - p1, p1], 1), (rng.random(200) < p1).astype(int)
    splits = np.array(["val", "test"] * 100)
    d = reliability_by_split(probs, y, splits, "binary", 0.5)
    assert set(d) == {"val", "test"} and sum(d["test"]["raw"]["count"]) == 100
    assert d["val"]["raw"]["count"] != d["val"]["calibrated"]["count"]  # T = 0.5 moves confidences into other bins


def test_predict_page_says_the_probabilities_are_calibrated(tiny_registry, synthetic_data, monkeypatch) -> None:
    monkeypatch.setenv("CXR_REGISTRY", str(tiny_registry))
    at = AppTest.from_file(str(ROOT / "pages/1_Predict.py"), default_timeout=300).run()
    image = next((synthetic_data / "test").rglob("*.png"))
    at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value for c in at.caption]
    assert any("temperature-scaled on validation (T = " in c for c in captions), captions
    assert any(c.startswith("Threshold on P(pneumonia): ") and "(0.5)" in c for c in captions), captions


@pytest.mark.skipif(not (RELEASE / "release.json").is_file(), reason="no committed release registry in this checkout")
def test_models_page_draws_the_reliability_diagram_of_the_release(monkeypatch) -> None:
    monkeypatch.setenv("CXR_REGISTRY", str(RELEASE))
    monkeypatch.setenv("CXR_SETTINGS", os.devnull)
    at = AppTest.from_file(str(ROOT / "pages/5_Models_and_data.py"), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Calibration" in [h.value for h in at.header]
    assert any("Temperature scaling fitted on validation" in c.value for c in at.caption)
