"""Tests for cxr_core.cards: metric keys, typed cards, tolerance of older cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_core.cards import ClassifierCard, DatasetInfo, DetectorCard, MetricKey, read_card
from cxr_core.config import InputSpec
from cxr_core.registry import EntryStatus, usable

RELEASE = Path(__file__).resolve().parents[1] / "release" / "kermany-224"


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("test", MetricKey("test")),
        ("val_tta4", MetricKey("val", tta=4)),
        ("test@youden_val", MetricKey("test", threshold="youden_val")),
        ("test_tta4@sens95_val", MetricKey("test", tta=4, threshold="sens95_val")),
        ("eval:test_tta2@youden_val", MetricKey("test", tta=2, threshold="youden_val", source="evaluate")),
        ("val_knn_weighted", MetricKey("val", knn="weighted")),
    ],
)
def test_metric_keys_round_trip(key: str, parsed: MetricKey) -> None:
    assert MetricKey.parse(key) == parsed
    assert str(parsed) == key


@pytest.mark.parametrize("key", ["", "Test", "test_tta", "test@", "test:probs", "val_tta4:probs"])
def test_other_keys_are_not_metric_keys(key: str) -> None:
    assert MetricKey.parse(key) is None


def test_an_old_minimal_classifier_card_reads_with_defaults() -> None:
    card = read_card({"kind": "classifier", "task": "binary", "id": "old", "architecture": "small_cnn",
                      "input": {"size": 64}, "metrics": {"test": {"accuracy": 0.9}, "odd key": {}}})
    assert isinstance(card, ClassifierCard)
    assert card.classes == ("NORMAL", "PNEUMONIA")  # from the task when the card did not store them
    assert card.input == InputSpec(size=64)
    assert card.threshold is None and card.thresholds == {} and card.temperature() == 1.0
    assert card.metric("test") == {"accuracy": 0.9} and card.metric(MetricKey("val")) is None
    assert list(card.metrics) == [MetricKey("test")]  # a key of another form is not a metric set
    assert card.dataset == DatasetInfo()


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        ({"kind": "autoencoder", "task": "anomaly"}, "autoencoder"),
        ({"kind": "detector", "task": "anomaly", "features": {}}, "features"),
        ({"kind": "detector", "task": "anomaly", "feature_recon": {}}, "feature_recon"),
        ({"kind": "detector", "task": "ood", "features": {}}, "ood"),
    ],
)
def test_detector_cards_say_which_kind(raw: dict, method: str) -> None:
    card = read_card({**raw, "metrics": {"val": {"auroc": 0.75}}})
    assert isinstance(card, DetectorCard) and card.method == method and card.val_auroc == 0.75


def test_dataset_info_keeps_the_validation_split_recipe() -> None:
    info = DatasetInfo.from_dict({"name": "synthetic-demo", "validation": {"fraction": 0.2, "seed": 3}})
    assert (info.val_fraction, info.val_seed, info.synthetic) == (0.2, 3, True)


def test_usable_keeps_verified_entries_of_one_kind_in_order(tmp_path: Path) -> None:
    def status(i: str, ok: bool, kind: str, task: str = "binary") -> EntryStatus:
        return EntryStatus(i, tmp_path / i, ok, None if ok else "broken", {"kind": kind, "task": task} if ok else None)

    statuses = [status("a", True, "classifier"), status("b", False, "classifier"), status("c", True, "detector"),
                status("d", True, "classifier", "multiclass")]
    assert [s.id for s in usable(statuses, "classifier")] == ["a", "d"]
    assert [s.id for s in usable(statuses, "classifier", "multiclass")] == ["d"]


def test_every_committed_release_card_reads_and_its_metric_keys_round_trip() -> None:
    cards = sorted(RELEASE.glob("*/card.json"))
    if not cards:
        pytest.skip("no committed release registry in this checkout")
    kinds = set()
    for path in cards:
        raw = json.loads(path.read_text())
        card = read_card(raw)
        kinds.add(type(card).__name__)
        assert card.id == path.parent.name
        if isinstance(card, ClassifierCard):
            assert card.input is not None and card.metric("test") is not None
            assert all(str(MetricKey.parse(k)) == k for k in raw["metrics"])
            assert len(card.metrics) == len(raw["metrics"])
    assert kinds == {"ClassifierCard", "DetectorCard"}
