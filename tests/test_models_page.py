"""The Models & data page: cards, metrics, charts, data distribution; broken entries and missing data are shown, not raised."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.registry import list_entries, update_card

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "5_Models_and_data.py")


def _run(monkeypatch, root) -> AppTest:
    monkeypatch.setenv("CXR_REGISTRY", str(root))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_page_shows_every_section_for_both_tasks(tiny_registry, monkeypatch):
    at = _run(monkeypatch, tiny_registry)
    box = at.selectbox(key="entry")
    assert len(box.options) == 2
    headers = _texts(at.header)
    for h in ("Model card", "Metrics", "ROC curves", "Training curves", "Training data"):
        assert h in headers
    # val and test metric tables and the class-count pivot
    assert len(at.dataframe) >= 3
    # confusion matrix, ROC, loss, validation, class counts, size and aspect histograms
    assert len(at.get("plotly_chart")) >= 7
    assert "Raw card (JSON)" in [e.label for e in at.expander]
    for option in box.options:
        at.selectbox(key="entry").select(option).run()
        assert not at.exception
        task = "binary" if "· binary ·" in option else "multiclass"
        cm_keys = at.selectbox(key="cm_key").options
        assert "test" in cm_keys and ("test@youden_val" in cm_keys) == (task == "binary")


def test_broken_entry_is_listed_with_its_reason(tiny_registry, monkeypatch, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    victim = list_entries(root)[0]
    with open(victim.path / "weights.safetensors", "ab") as f:
        f.write(b"\0")
    at = _run(monkeypatch, root)
    errors = _texts(at.error)
    assert victim.id in errors and "weights.safetensors" in errors
    assert len(at.selectbox(key="entry").options) == 1


def test_missing_dataset_folder_is_explained(tiny_registry, monkeypatch, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    for s in list_entries(root):
        update_card(s.entry(), lambda c: c["dataset"].update(root=str(tmp_path / "gone")))
    at = _run(monkeypatch, root)
    assert "not on this machine" in _texts(at.info)
    assert "Training data" in _texts(at.header)


@pytest.mark.parametrize("make", ["empty", "absent"])
def test_no_entries(monkeypatch, tmp_path, make):
    root = tmp_path / "reg"
    if make == "empty":
        root.mkdir()
    at = _run(monkeypatch, root)
    assert "No usable entries" in _texts(at.warning)
