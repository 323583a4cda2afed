"""python -m train.evaluate: figures match the card's, are stored, and a changed dataset is flagged."""

from __future__ import annotations

import json
import shutil

import pytest

from cxr_core.registry import list_entries, select
from train.evaluate import main


@pytest.fixture()
def registry_copy(tiny_registry, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    return root


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_evaluate_reproduces_and_stores_test_metrics(registry_copy, task, capsys):
    entry = select(list_entries(registry_copy), "classifier", task)
    assert main([str(entry.path), "--split", "test", "--tta", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    for word in ("accuracy", "specificity", "ECE", "per-class accuracy", "confusion", "eval:test_tta2"):
        assert word in out.out
    card = json.loads((entry.path / "card.json").read_text())
    m = card["metrics"]
    assert m["eval:test"]["accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert m["eval:test_tta2"]["accuracy"] == pytest.approx(m["test_tta2"]["accuracy"])
    auroc = "auroc" if task == "binary" else "auroc_ovr"
    assert m["eval:test"][auroc] == pytest.approx(m["test"][auroc], abs=1e-6)
    assert m["eval:test"]["confusion"] == m["test"]["confusion"]
    if task == "binary":
        assert m["eval:test@youden_val"]["threshold"] == pytest.approx(card["thresholds"]["youden_val"])
        assert set(m["eval:test"]) >= {"precision", "sensitivity", "specificity", "f1", "ece", "per_class_accuracy"}
    else:
        assert set(m["eval:test"]) >= {"precision_macro", "recall_macro", "specificity_macro", "as_binary", "per_class_accuracy"}
    ev = card["evaluations"][-1]
    assert ev["fingerprint_matches"] is True and ev["split"] == "test" and ev["tta"] == 2
    # stored through update_card: the entry still verifies
    assert all(s.ok for s in list_entries(registry_copy))


def test_changed_dataset_is_evaluated_with_a_warning(registry_copy, synthetic_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    next((data / "train" / "NORMAL").iterdir()).unlink()
    entry = select(list_entries(registry_copy), "classifier", "binary")
    assert main([entry.id, "--root", str(registry_copy), "--data", str(data), "--split", "val", "--tta", "1", "--no-store"]) == 0
    err = capsys.readouterr().err
    assert "fingerprint" in err and "differs" in err
    card = json.loads((entry.path / "card.json").read_text())
    assert "evaluations" not in card  # --no-store


def test_unknown_entry_is_a_clear_error(registry_copy, capsys):
    assert main(["no-such-entry", "--root", str(registry_copy)]) == 2
    assert "no entry" in capsys.readouterr().err
