"""Embedding explorer and Predict neighbour section (AppTest) on an index built from real cxr-mini images."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "2_Embedding_explorer.py")
PER_SPLIT = 40  # real images per split: the real decode/embed path, in seconds


@pytest.fixture(scope="module")
def mini_registry(cxr_mini, tmp_path_factory) -> Path:
    """A binary Lite0 trained one epoch at 64 px on part of cxr-mini, indexed with t-SNE 2-D and 3-D."""
    from cxr_core.reference import IndexConfig, build_index
    from cxr_core.registry import list_entries, select
    from cxr_core.training import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("mini") / "registry"
    train_classifier(
        TrainConfig(data=str(cxr_mini), task="binary", out=str(root), size=64, epochs=1, batch_size=32, tta=1,
                    device="cpu", patience=1, max_per_split=PER_SPLIT),
        log=lambda s: None,
    )
    entry = select(list_entries(root), "classifier", "binary")
    assert entry is not None
    build_index(entry, cxr_mini, IndexConfig(device="cpu", max_per_split=PER_SPLIT, projections=("tsne_2d", "tsne_3d"),
                                             thumb_size=64), log=lambda s: None)
    return root


@pytest.fixture(scope="module")
def ref(mini_registry):
    from cxr_core.reference import ReferenceSet
    from cxr_core.registry import list_entries, select

    entry = select(list_entries(mini_registry), "classifier", "binary")
    return ReferenceSet.from_entry(entry)


def app(monkeypatch, root: Path) -> AppTest:
    monkeypatch.setenv("CXR_REGISTRY", str(root))
    return AppTest.from_file(PAGE, default_timeout=120)


def chart_spec(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def decode(arr) -> np.ndarray:
    """A plotly JSON array: a list or a base64 typed array."""
    if isinstance(arr, dict) and "bdata" in arr:
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.dtype(arr["dtype"]))
    return np.asarray(arr)


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def select_points(at: AppTest, customdata: list) -> None:
    at.session_state["explorer_map"] = {
        "selection": {"points": [{"customdata": c} for c in customdata], "point_indices": [], "box": [], "lasso": []}
    }


def test_explorer_renders_every_point_with_row_ids(monkeypatch, mini_registry, ref) -> None:
    at = app(monkeypatch, mini_registry).run()
    no_errors(at)
    spec = chart_spec(at)
    ids = np.concatenate([decode(t["customdata"]) for t in spec["data"]])
    assert sorted(ids.tolist()) == list(range(len(ref)))  # every image, once, with its global row id
    assert {t["type"] for t in spec["data"]} == {"scattergl"}
    assert len(ref) == 3 * PER_SPLIT and set(ref.splits.tolist()) == {"train", "val", "test"}


def test_clicked_point_shows_image_and_neighbour_thumbnails(monkeypatch, mini_registry, ref) -> None:
    at = app(monkeypatch, mini_registry).run()
    row = 17
    select_points(at, [{"0": row}])  # the dict form a selected point's customdata can take
    at.run()
    no_errors(at)
    images = at.image
    assert len(images) >= 2
    big, neighbours = images[0], images[1]
    assert ref.paths[row].rsplit("/", 1)[-1] in big.captions[0]
    expect = ref.knn.query_rows([row], ref.k)
    assert len(neighbours.captions) == ref.k == 7
    for cap, i, d in zip(neighbours.captions, expect.ids[0], expect.dist[0], strict=True):
        assert ref.paths[i].rsplit("/", 1)[-1] in cap and str(ref.splits[i]) in cap and f"d={d:.3f}" in cap
    votes = [m.value for m in at.markdown if "KNN vote, majority (K=7)" in m.value]
    assert len(votes) == 1 and "Classifier head" in votes[0]


def test_lasso_selection_shows_gallery_and_breakdown(monkeypatch, mini_registry, ref) -> None:
    at = app(monkeypatch, mini_registry).run()
    rows = list(range(5, 65))
    select_points(at, rows[:30] + [[r] for r in rows[30:]] + [-1])  # scalars, lists, and the upload marker
    at.run()
    no_errors(at)
    assert any("60 images selected" in m.value for m in at.markdown)
    assert len(at.image) == 1 and len(at.image[0].captions) == 48  # first page of the gallery
    assert at.number_input(key="explorer_page").max == 2
    at.number_input(key="explorer_page").set_value(2).run()
    assert len(at.image[0].captions) == 12
    table = at.dataframe[0].value
    assert int(table["images"].sum()) == 60


def test_search_by_file_name_and_3d_view(monkeypatch, mini_registry, ref) -> None:
    at = app(monkeypatch, mini_registry).run()
    name = ref.paths[42].rsplit("/", 1)[-1]
    at.text_input(key="explorer_find").input(name.upper()).run()
    no_errors(at)
    assert at.selectbox(key="explorer_pick").value == 42
    assert name in at.image[0].captions[0]
    at.radio(key="explorer_dims").set_value(3).run()
    no_errors(at)
    assert {t["type"] for t in chart_spec(at)["data"]} == {"scatter3d"}
    at.text_input(key="explorer_find").input("no-such-file").run()
    assert any("No file name contains" in c.value for c in at.caption)


def test_last_upload_is_a_marked_point(monkeypatch, mini_registry, ref) -> None:
    at = app(monkeypatch, mini_registry)
    at.session_state["last_prediction"] = {"name": "upload.png", "embedding": ref.knn.embeddings[9].copy(), "entry": ref.entry_id}
    at.run()
    no_errors(at)
    star = [t for t in chart_spec(at)["data"] if t["name"].startswith("upload: upload.png")]
    assert len(star) == 1
    xy = [decode(star[0]["x"])[0], decode(star[0]["y"])[0]]
    np.testing.assert_allclose(xy, ref.maps["tsne_2d"][9], atol=1e-4)  # a reference image lands on its point


PREDICT_SECTION = """
from types import SimpleNamespace
from pages.ui.loaders import reference_set
from pages.ui.predict_neighbors import render
ref = reference_set({entry!r})
pred = SimpleNamespace(embedding=ref.knn.embeddings[3] + {shift}, embedding_entry={entry!r},
                       results={{"binary": SimpleNamespace(label="PNEUMONIA")}})
render(None, pred)
"""


def test_predict_section_shows_neighbours_and_vote(monkeypatch, mini_registry, ref) -> None:
    monkeypatch.setenv("CXR_REGISTRY", str(mini_registry))
    at = AppTest.from_string(PREDICT_SECTION.format(entry=ref.entry_id, shift=0.01), default_timeout=120).run()
    no_errors(at)
    assert len(at.image) == 1 and len(at.image[0].captions) == ref.k
    table = next(m.value for m in at.markdown if "KNN vote, majority (K=7)" in m.value)
    assert "KNN vote, distance-weighted (K=7)" in table and "| Classifier head | **PNEUMONIA** |" in table
    assert len(at.get("plotly_chart")) == 1
    assert not at.info


def test_predict_section_leaves_an_identical_reference_image_out(monkeypatch, mini_registry, ref) -> None:
    monkeypatch.setenv("CXR_REGISTRY", str(mini_registry))
    at = AppTest.from_string(PREDICT_SECTION.format(entry=ref.entry_id, shift=0.0), default_timeout=120).run()
    no_errors(at)
    assert len(at.info) == 1 and str(ref.paths[3]) in at.info[0].value
    captions = at.image[0].captions
    assert len(captions) == ref.k and not any(str(ref.paths[3]).rsplit("/", 1)[-1] in c for c in captions)
    expect = ref.knn.query_rows([3], ref.k)
    assert all(str(ref.paths[i]).rsplit("/", 1)[-1] in c for i, c in zip(expect.ids[0], captions, strict=True))


def test_explorer_without_index_says_how_to_build_one(monkeypatch, tiny_registry) -> None:
    at = app(monkeypatch, tiny_registry).run()
    no_errors(at)
    assert any("python -m train.index" in i.value for i in at.info)


def test_upload_on_predict_page_shows_neighbours_and_appears_on_the_map(monkeypatch, mini_registry, ref, cxr_mini) -> None:
    """The real flow in one session: upload on Predict → neighbours there → the same point marked in the explorer."""
    monkeypatch.setenv("CXR_REGISTRY", str(mini_registry))
    at = AppTest.from_file(str(Path(PAGE).with_name("1_Predict.py")), default_timeout=180).run()
    row = 11
    img = cxr_mini / str(ref.paths[row])
    at.file_uploader(key="upload").set_value((img.name, img.read_bytes(), "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value == "Similar reference images" for s in at.subheader)
    assert any(str(ref.paths[row]) in i.value for i in at.info)  # recognised as a reference image
    neighbours = next(im for im in at.image if len(im.captions) == ref.k)
    expect = ref.knn.query_rows([row], ref.k)
    assert all(str(ref.paths[i]).rsplit("/", 1)[-1] in c for i, c in zip(expect.ids[0], neighbours.captions, strict=True))
    at.switch_page(str(Path(PAGE))).run()
    no_errors(at)
    star = [t for t in chart_spec(at)["data"] if t["name"].startswith("upload: ")]
    assert len(star) == 1 and img.name in star[0]["name"]
    xy = [decode(star[0]["x"])[0], decode(star[0]["y"])[0]]
    np.testing.assert_allclose(xy, ref.maps["tsne_2d"][row], atol=1e-3)
