"""Training writes a complete, loadable registry entry; the predictor uses it."""

from __future__ import annotations

import numpy as np

from cxr_core.imaging import read_gray
from cxr_core.inference import load_classifier
from cxr_core.predict import Predictor
from cxr_core.registry import list_entries, select
from cxr_core.training import epoch_indices


def test_tiny_registry_has_both_tasks_with_complete_cards(tiny_registry):
    statuses = list_entries(tiny_registry)
    assert [s.ok for s in statuses] == [True, True]
    for task, n in (("binary", 2), ("multiclass", 3)):
        e = select(statuses, "classifier", task)
        c = e.card
        assert len(c["classes"]) == n and c["input"]["size"] == 96
        assert c["pretrained"] is True and "efficientnet-lite0" in c["pretrained_source"]
        assert {"val", "test", "test_tta2"} <= set(c["metrics"])
        assert 0.0 <= c["metrics"]["test"]["accuracy"] <= 1.0
        assert c["training"]["epochs_run"] == 2 and len(c["training"]["history"]) == 2
        assert c["dataset"]["fingerprint"] and c["dataset"]["counts"]["train"]
        assert c["training"]["args"]["balance"] == "class-weights"
    assert "youden_val" in select(statuses, "classifier", "binary").card["thresholds"]


def test_predictor_on_a_synthetic_image(tiny_registry, synthetic_data):
    pred = Predictor.from_registry(str(tiny_registry))
    assert set(pred.tasks) == {"binary", "multiclass"}
    img = read_gray(next((synthetic_data / "test" / "PNEUMONIA").iterdir()))
    out = pred.predict(img)
    for res in out.results.values():
        assert abs(sum(res.probs) - 1) < 1e-5
        assert res.label in res.classes
    assert out.embedding is not None and abs(np.linalg.norm(out.embedding) - 1) < 1e-5
    tta = pred.predict(img, tta=4)
    assert tta.results["binary"].tta == 4


def test_loaded_model_reproduces_card_metrics(tiny_registry, synthetic_data):
    """The registry weights give the same test accuracy as the card claims (no train/serve skew)."""
    from cxr_core.data import read_dataset
    from cxr_core.inference import infer
    from cxr_core.metrics import task_metrics
    from cxr_core.preprocess import prepare

    entry = select(list_entries(tiny_registry), "classifier", "multiclass")
    clf = load_classifier(entry)
    ds = read_dataset(synthetic_data)
    test = ds.split("test")
    x = np.stack([prepare(read_gray(ds.abspath(s)), clf.spec) for s in test])
    probs, _ = infer(clf.model, x, clf.spec, clf.task)
    m = task_metrics(clf.task, np.array([s.target(clf.task) for s in test]), probs, clf.classes)
    assert abs(m["accuracy"] - entry.card["metrics"]["test"]["accuracy"]) < 1e-9


def test_balance_policies():
    y = np.array([0] * 10 + [1] * 30)
    rng = np.random.default_rng(0)
    over = epoch_indices(y, "oversample", rng)
    assert np.bincount(y[over]).tolist() == [30, 30]
    under = epoch_indices(y, "undersample", rng)
    assert np.bincount(y[under]).tolist() == [10, 10]
    plain = epoch_indices(y, "none", rng)
    assert sorted(plain.tolist()) == list(range(40))
