"""Tests for cxr_core.cards: metric keys, typed cards, tolerance of older cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_core.cards import ClassifierCard, DatasetInfo, DetectorCard, MetricKey, read_card
from cxr_core.config import InputSpec
from cxr_core.registry import EntryStatus, RegistryError, usable

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


def test_every_committed_release_card_round_trips_through_its_typed_form() -> None:
    """to_dict() of a read card reads back equal, and keeps every key of the stored JSON (older ones too)."""
    cards = sorted(RELEASE.glob("*/card.json"))
    if not cards:
        pytest.skip("no committed release registry in this checkout")
    for path in cards:
        raw = json.loads(path.read_text())
        card = read_card(raw)
        again = card.to_dict()
        assert read_card(again) == card, path.parent.name
        lost = {k for k, v in raw.items() if v is not None and k not in again} - {"schema_version"}
        assert not lost, f"{path.parent.name} loses {sorted(lost)}"


def _written(tmp_path: Path, card: ClassifierCard | DetectorCard):
    from cxr_core.registry import load_entry, write_entry

    entry = write_entry(tmp_path, card, arrays={"scores.npz": {"x": np.zeros(2)}})
    return load_entry(tmp_path, entry.id)


def test_a_typed_card_is_written_and_read_back(tmp_path: Path) -> None:
    ds = DatasetInfo(name="demo", root="/data", fingerprint="f", val_fraction=0.2, val_seed=3,
                     counts={"train": {"normal": 4}}, used={"train": 4}, layout="manifest")
    card = ClassifierCard(task="binary", classes=("NORMAL", "PNEUMONIA"), architecture="small_cnn", num_outputs=1,
                          input=InputSpec(size=64), dataset=ds, threshold=0.4, threshold_source="youden_val",
                          thresholds={"youden_val": 0.4}, metrics={MetricKey("test"): {"accuracy": 0.9},
                                                                   MetricKey("test", tta=4, threshold="youden_val"): {"accuracy": 0.91}},
                          calibration={"temperature": 1.5}, recipe="cpu-best")
    entry = _written(tmp_path, card)
    got = entry.classifier_card
    assert got.dataset == ds and got.input == InputSpec(size=64) and got.threshold == 0.4
    assert got.metric("test_tta4@youden_val") == {"accuracy": 0.91} and got.temperature() == 1.5
    assert got.id == entry.id and got.has("scores.npz") and got.created_at and got.code_version
    assert json.loads((entry.path / "card.json").read_text())["metrics"]["test_tta4@youden_val"] == {"accuracy": 0.91}
    with pytest.raises(RegistryError, match="not a detector"):
        _ = entry.detector_card


def test_typed_updates_replace_knn_sets_and_append_evaluations(tmp_path: Path) -> None:
    from cxr_core.registry import update_info

    card = ClassifierCard(task="binary", architecture="small_cnn", metrics={
        MetricKey("test"): {"accuracy": 0.9}, MetricKey("val", knn="majority"): {"vote_accuracy": 0.1}})
    entry = _written(tmp_path, card)
    before = entry.info
    assert entry.info is before  # parsed once per card
    update_info(entry, lambda c: c.with_index({"k": 5}, {MetricKey("test", knn="weighted"): {"vote_accuracy": 0.8}}))
    got = entry.classifier_card
    assert got is not before and got.index == {"k": 5} and got.has_index
    assert set(got.metrics) == {MetricKey("test"), MetricKey("test", knn="weighted")}
    update_info(entry, lambda c: c.with_evaluation({MetricKey("test", source="evaluate"): {"accuracy": 0.8}}, {"split": "test"}))
    got = entry.classifier_card
    assert got.metric("eval:test") == {"accuracy": 0.8} and got.evaluations == ({"split": "test"},)
    assert got.index == {"k": 5}  # earlier sections survive a typed update
    raw = json.loads((entry.path / "card.json").read_text())
    assert raw["schema_version"] and raw["files"] and raw["updated_at"]


def test_detector_cards_write_their_method_section(tmp_path: Path) -> None:
    card = DetectorCard(kind="detector", task="anomaly", method="feature_recon", config={"kind": "distill"},
                        metrics={"val": {"auroc": 0.9}}, histograms={"val": {"bins": [0, 1]}}, map_scale=0.3,
                        threshold=1.2, threshold_source={"name": "youden", "split": "val", "note": ""})
    raw = card.to_dict()
    assert raw["feature_recon"] == {"kind": "distill"} and "features" not in raw
    got = _written(tmp_path, card).detector_card
    assert got.has_map and got.val_auroc == 0.9 and got.map_scale == 0.3 and got.config == {"kind": "distill"}
    assert got.threshold_or(0.0) == 1.2 and got.split_metrics("val") == {"auroc": 0.9}
