"""Worklist (issue 18): uploads → study files (zip in memory), batched processing of a mixed batch, the
table's sort / filter / CSV, the page in AppTest, and the batched prediction equal to the single one."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.worklist import (
    StudyFile,
    StudyRow,
    WorklistLimits,
    WorklistProcessor,
    expand_uploads,
    filter_rows,
    rows_to_csv,
    sort_rows,
)
from tests.conftest import REPO
from tests.upload_corpus import dicom, phantom, pil_bytes

TIMEOUT = 180


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def photo(seed: int = 3) -> np.ndarray:
    """A colourful RGB 'holiday photo' (saturated hues), nothing like a radiograph."""
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), 255 - (xx * 255 // w)], axis=-1).astype(np.uint8)
    rgb[rng.random((h, w)) < 0.02] = (255, 0, 0)
    return rgb


def mixed_batch() -> list[tuple[str, bytes, str]]:
    """PNG, JPEG, DICOM without extension, a corrupt file, a photo, and a zip of two studies."""
    deep = (phantom(128, seed=5, subtype="bacteria").astype(np.uint16) * 16)
    return [
        ("normal_01.png", pil_bytes(phantom(128, seed=1), "PNG"), "image/png"),
        ("viral_02.jpg", pil_bytes(phantom(128, seed=2, subtype="virus"), "JPEG", quality=92), "image/jpeg"),
        ("IM000123", dicom(deep, bits_stored=12, window=(2048, 4096)), "application/octet-stream"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"this is not really a PNG", "image/png"),
        ("holiday.jpg", pil_bytes(photo(), "JPEG", quality=90), "image/jpeg"),
        ("two_more.zip", _zip({"batch/a.png": pil_bytes(phantom(128, seed=7), "PNG"),
                               "__MACOSX/batch/._a.png": b"junk", "batch/.DS_Store": b"junk",
                               "batch/b.png": pil_bytes(phantom(128, seed=8, subtype="bacteria"), "PNG")}),
         "application/zip"),
    ]


# --- uploads → study files ------------------------------------------------------------------


def test_expand_uploads_opens_zips_in_memory_and_skips_junk():
    files = expand_uploads([(n, d) for n, d, _ in mixed_batch()])
    names = [f.name for f in files]
    assert names == ["normal_01.png", "viral_02.jpg", "IM000123", "broken.png", "holiday.jpg",
                     "two_more.zip/batch/a.png", "two_more.zip/batch/b.png"]
    assert all(f.error is None for f in files)


def test_expand_uploads_says_why_for_bad_archives_and_limits():
    png = pil_bytes(phantom(64, seed=1), "PNG")
    damaged = _zip({"a.png": png})[:40]
    nested = _zip({"inner.zip": _zip({"a.png": png}), "ok.png": png})
    files = expand_uploads([("damaged.zip", damaged), ("nested.zip", nested), ("empty.zip", _zip({}))])
    by_name = {f.name: f for f in files}
    assert "damaged" in by_name["damaged.zip"].error
    assert "inside a zip" in by_name["nested.zip/inner.zip"].error
    assert by_name["nested.zip/ok.png"].error is None
    assert "no files" in by_name["empty.zip"].error
    many = expand_uploads([(f"{i}.png", png) for i in range(5)], WorklistLimits(max_studies=3))
    assert len(many) == 4 and "at most 3" in many[-1].error
    big = expand_uploads([("big.zip", _zip({f"{i}.png": png for i in range(4)}))],
                         WorklistLimits(max_zip_members=2))
    assert [f.error is None for f in big] == [True, True, False]


def test_an_office_document_is_not_opened_as_an_archive():
    doc = _zip({"word/document.xml": b"<xml/>"})
    files = expand_uploads([("letter.docx", doc)])
    assert len(files) == 1 and files[0].name == "letter.docx" and files[0].data == doc


# --- processing -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictor(tiny_registry: Path):
    from cxr_core.predict import Predictor

    return Predictor.from_registry(str(tiny_registry))


def test_mixed_batch_rows(tiny_predictor):
    files = expand_uploads([(n, d) for n, d, _ in mixed_batch()])
    proc = WorklistProcessor(tiny_predictor, batch_size=3)
    done = []
    rows = proc.run(files, progress=lambda a, b: done.append((a, b)))
    assert done == [(3, 7), (6, 7), (7, 7)]  # the table fills in batch by batch
    by = {r.file: r for r in rows}
    assert [r.index for r in rows] == list(range(1, 8))
    assert not by["broken.png"].ok and "damaged" in by["broken.png"].status.lower() or "incomplete" in by[
        "broken.png"].status.lower()
    assert by["broken.png"].p_pneumonia is None
    for name in ("normal_01.png", "viral_02.jpg", "IM000123", "holiday.jpg", "two_more.zip/batch/b.png"):
        r = by[name]
        assert r.ok, (name, r.status)
        assert 0.0 <= r.p_pneumonia <= 1.0
        assert r.binary_label in ("NORMAL", "PNEUMONIA")
        assert r.label3 in ("normal", "bacteria", "virus") and 0.0 < r.prob3 <= 1.0
    assert by["IM000123"].format == "DICOM" and by["viral_02.jpg"].format == "JPEG"
    # The photo is flagged by the chest X-ray check (colour), the phantoms are not.
    assert by["holiday.jpg"].guard_ok is False and "colour" in by["holiday.jpg"].guard
    assert by["normal_01.png"].guard_ok is True
    assert proc.timings.total > 0


def test_batched_prediction_equals_single(tiny_predictor):
    grays = [phantom(128, seed=s, subtype=t) for s, t in ((1, "normal"), (2, "virus"), (3, "bacteria"))]
    grays.append(np.asarray(Image.fromarray(grays[0]).resize((200, 150))))
    batch = tiny_predictor.predict_batch(grays, batch_size=2)
    for g, b in zip(grays, batch, strict=True):
        one = tiny_predictor.predict(g)
        for task, res in one.results.items():
            assert b.results[task].label == res.label
            np.testing.assert_allclose(b.results[task].probs, res.probs, atol=1e-4)
        np.testing.assert_allclose(b.embedding, one.embedding, atol=1e-4)
        assert b.embedding_entry == one.embedding_entry


# --- table helpers --------------------------------------------------------------------------


def _rows() -> list[StudyRow]:
    return [
        StudyRow(1, "b.png", "PNG", 0.2, "NORMAL", "normal", 0.7, 0.1, 0.5, False, "looks like a chest X-ray", True),
        StudyRow(2, "a.dcm", "DICOM", 0.9, "PNEUMONIA", "bacteria", 0.8, 0.9, 0.5, True, "looks like a chest X-ray", True),
        StudyRow(3, "=cmd()", status="The file is empty (0 bytes)."),
        StudyRow(4, "c.jpg", "JPEG", 0.6, "PNEUMONIA", "virus", 0.5, 0.3, 0.5, False, "NOT a chest X-ray: colour", False),
    ]


def test_sort_rows_by_any_column_missing_values_last():
    rows = _rows()
    assert [r.index for r in sort_rows(rows, "p_pneumonia", descending=True)] == [2, 4, 1, 3]
    assert [r.index for r in sort_rows(rows, "p_pneumonia")] == [1, 4, 2, 3]
    assert [r.index for r in sort_rows(rows, "file")] == [3, 2, 1, 4]
    for attr in StudyRow.__dataclass_fields__:
        assert len(sort_rows(rows, attr)) == 4
    with pytest.raises(ValueError):
        sort_rows(rows, "patient_name")


def test_filter_rows():
    rows = _rows()
    assert [r.index for r in filter_rows(rows, text="A.")] == [2]
    assert [r.index for r in filter_rows(rows, p_min=0.5)] == [2, 4]
    assert [r.index for r in filter_rows(rows, labels=["virus", "normal"])] == [1, 4]
    assert [r.index for r in filter_rows(rows, only_flagged=True)] == [2]
    assert [r.index for r in filter_rows(rows, only_not_cxr=True)] == [4]
    assert [r.index for r in filter_rows(rows, statuses={"failed"})] == [3]


def test_csv_export_parses_and_neutralises_formulas():
    data = rows_to_csv(_rows())
    table = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [t["#"] for t in table] == ["1", "2", "3", "4"]
    assert table[1]["P(pneumonia)"] == "0.9" and table[1]["3-class label"] == "bacteria"
    assert table[1]["Anomaly flag"] == "True" and table[1]["Anomaly threshold"] == "0.5"
    assert table[2]["File"] == "'=cmd()" and table[2]["Status"].startswith("The file is empty")
    assert table[3]["Chest X-ray check"].startswith("NOT a chest X-ray")


def test_a_failing_model_marks_its_rows_and_the_worklist_goes_on(tiny_predictor):
    class Broken:
        def predict_batch(self, grays, batch_size=16):
            raise RuntimeError("out of memory")

    files = [StudyFile("a.png", pil_bytes(phantom(64, seed=1), "PNG")), StudyFile("b.png", b"", "gone")]
    rows = WorklistProcessor(Broken(), batch_size=4).run(files)
    assert "could not classify" in rows[0].status and rows[1].status == "gone"


# --- the page (AppTest) ---------------------------------------------------------------------


def _worklist_page(registry: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(str(REPO / "pages/6_Worklist.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def test_worklist_page_mixed_batch(tiny_registry: Path, monkeypatch):
    at = _worklist_page(tiny_registry, monkeypatch)
    at.file_uploader(key="worklist_upload").set_value(mixed_batch())
    at.run()
    assert not at.exception, at.exception
    df = at.dataframe[0].value
    assert len(df) == 7
    status = dict(zip(df["File"], df["Status"], strict=True))
    assert status["broken.png"] != "ok" and sum(s == "ok" for s in status.values()) == 6
    guard = dict(zip(df["File"], df["Chest X-ray check"], strict=True))
    assert guard["holiday.jpg"].startswith("NOT a chest X-ray")

    # Sort by P(pneumonia), highest first: the unreadable study goes last.
    at.selectbox(key="wl_sort").set_value("p_pneumonia")
    at.toggle(key="wl_desc").set_value(True)
    at.run()
    df = at.dataframe[0].value
    p = df["P(pneumonia)"].tolist()
    assert p[:-1] == sorted(p[:-1], reverse=True) and df["File"].iloc[-1] == "broken.png"

    # Open the top study: the guard's verdict comes before the predictions.
    top = int(df["#"].iloc[0])
    at.selectbox(key="worklist_open").set_value(top)
    at.run()
    assert not at.exception, at.exception
    labels = [m.value for m in at.metric if m.label == "Prediction"]
    assert len(labels) == 2
    assert any(f"Study #{top}" in h.value for h in at.header)

    # The unreadable one says why and shows no prediction.
    bad = int(df["#"].iloc[-1])
    at.selectbox(key="worklist_open").set_value(bad)
    at.run()
    assert not at.exception
    assert any("cannot be used" in e.value for e in at.error)
    assert not [m for m in at.metric if m.label == "Prediction"]

    # Filters: only the study the guard flags.
    at.checkbox(key="wl_notcxr").check()
    at.run()
    assert at.dataframe[0].value["File"].tolist() == ["holiday.jpg"]


def test_predict_page_shows_the_guard_first_and_greys_a_flagged_study(tiny_registry: Path, monkeypatch):
    monkeypatch.setenv("CXR_REGISTRY", str(tiny_registry))
    at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=TIMEOUT).run()
    at.file_uploader(key="upload").set_value(("holiday.jpg", pil_bytes(photo(), "JPEG", quality=90), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    # Order on the page: the warning is above the first prediction.
    order = [type(e).__name__ + ":" + str(getattr(e, "value", "")) for e in at.main]
    flat = _flatten(at.main)
    kinds = [(type(e).__name__, str(getattr(e, "value", ""))) for e in flat]
    warn = next(i for i, (k, v) in enumerate(kinds) if k == "Warning" and "does not look like" in v)
    first_metric = next(i for i, (k, _) in enumerate(kinds) if k == "Metric")
    assert warn < first_metric, order
    assert any("Greyed" in c.value for c in at.caption)
    containers = [e for e in flat if getattr(getattr(e, "proto", None), "id", "") and "predictions_flagged" in str(
        getattr(e, "key", "") or "")]
    assert containers or any("predictions_flagged" in str(getattr(e, "proto", "")) for e in flat)


def _flatten(node) -> list:
    out = []
    for child in getattr(node, "children", {}).values():
        out.append(child)
        out.extend(_flatten(child))
    return out
