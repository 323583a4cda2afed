"""The Models & data page: cards, metrics, charts, data distribution; broken entries and missing data are shown, not raised."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
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


def _figure(chart) -> dict:
    """A plotly chart element's figure as JSON (numeric arrays decoded from plotly's typed-array form)."""
    def decode(v):
        if isinstance(v, dict) and "bdata" in v and "dtype" in v:
            arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
            shape = v.get("shape")
            if isinstance(shape, str):  # plotly writes "3, 3"
                shape = [int(n) for n in shape.split(",")]
            return arr.reshape(shape) if shape is not None else arr
        if isinstance(v, dict):
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    return decode(json.loads(chart.proto.spec))


def _confusion_shown(at) -> tuple[str, np.ndarray]:
    """(title, z) of the confusion-matrix heatmap."""
    heatmaps = [f for f in map(_figure, at.get("plotly_chart")) if f["data"] and f["data"][0].get("type") == "heatmap"]
    assert len(heatmaps) == 1, f"{len(heatmaps)} heatmaps on the page"
    fig = heatmaps[0]
    return fig["layout"]["title"]["text"], np.asarray(fig["data"][0]["z"]).astype(float)


def _metric_row(at, key: str) -> dict:
    """The metrics-table row (as a dict) for a card metrics key, from whichever split table shows it."""
    rows = [row for df in (d.value for d in at.dataframe) if "key" in df.columns
            for row in df.reset_index().to_dict("records") if row["key"] == key]
    assert len(rows) == 1, f"metrics key {key!r} shown {len(rows)} times"
    return rows[0]


def test_page_shows_every_section_for_both_tasks(tiny_registry, monkeypatch):
    """Every section, and what it shows is the card's: metrics, confusion counts, class counts, facts."""
    at = _run(monkeypatch, tiny_registry)
    box = at.selectbox(key="entry")
    assert len(box.options) == 2
    headers = _texts(at.header)
    for h in ("Model card", "Metrics", "ROC curves", "Training curves", "Training data"):
        assert h in headers
    # confusion matrix, ROC, loss, validation, class counts, size and aspect histograms
    assert len(at.get("plotly_chart")) >= 7
    assert "Raw card (JSON)" in [e.label for e in at.expander]
    assert at.selectbox(key="cm_key").value == "test" and _confusion_shown(at)[0] == "test"  # the default
    cards = {s.id: s.card for s in list_entries(tiny_registry)}
    seen_tasks = set()
    for option in box.options:
        at.selectbox(key="entry").select(option).run()
        assert not at.exception
        card = next(c for entry_id, c in cards.items() if entry_id in option)
        task = card["task"]
        seen_tasks.add(task)
        assert ("· binary ·" in option) == (task == "binary")
        metrics = card["metrics"]

        # The metric tables: the card's numbers, on the row of their key.
        for key in ("test", "val"):
            row = _metric_row(at, key)
            assert row["n"] == metrics[key]["n"]
            assert row["accuracy"] == pytest.approx(metrics[key]["accuracy"])
            if task == "binary":
                assert row["auroc"] == pytest.approx(metrics[key]["auroc"])
                assert row["sensitivity"] == pytest.approx(metrics[key]["sensitivity"])
            else:
                assert row["F1 (macro)"] == pytest.approx(metrics[key]["f1_macro"])
                assert row["AUROC (OvR)"] == pytest.approx(metrics[key]["auroc_ovr"])

        # The confusion matrix: the card's counts, true classes down, predicted across.
        cm_keys = at.selectbox(key="cm_key").options
        assert "test" in cm_keys and ("test@youden_val" in cm_keys) == (task == "binary")
        for key in ("test", "val"):
            at.selectbox(key="cm_key").select(key).run()
            title, z = _confusion_shown(at)
            assert title == key
            np.testing.assert_array_equal(z, np.asarray(metrics[key]["confusion"], dtype=float))
            assert z.sum() == metrics[key]["n"]

        # The class counts per split, and the card's facts.
        counts = card["dataset"]["counts"]
        pivots = [d.value for d in at.dataframe if d.value.index.name == "class"]
        assert len(pivots) == 1
        for split, per in counts.items():
            for cls, n in per.items():
                assert pivots[0].loc[cls, split] == n, (split, cls)
        facts = at.table[0].value.iloc[:, 0].to_dict()
        assert facts["entry id"] == card["id"] and facts["classes"] == ", ".join(card["classes"])
        assert facts["threshold in use"] == str(card.get("threshold", "—"))
    assert seen_tasks == {"binary", "multiclass"}


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
