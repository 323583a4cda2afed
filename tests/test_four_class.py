"""A four-class phantom set (normal / bacteria / virus / COVID-like) through the whole flow (issue 16).

Written as a manifest dataset, trained with ``--task auto``, indexed, given a healthy-only
detector on its ``normal`` class, then every page served from that registry alone (no binary
model) in AppTest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.registry import list_entries, select
from cxr_core.synthetic import ALL_SUBTYPES, SyntheticSpec, make_phantom, write_dataset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("normal", "bacteria", "covid", "virus")  # the healthy class first, then sorted: the model outputs


def build_four_class(root: Path) -> tuple[Path, Path]:
    """(data, registry): a four-class manifest set and a registry with its classifier, index and detector."""
    from cxr_core.reference import IndexConfig, build_index
    from cxr_core.training import TrainConfig, train_classifier
    from train.anomaly import main as anomaly_main

    data = write_dataset(root / "covid-phantoms", SyntheticSpec(
        n_per_class={"train": 14, "val": 5, "test": 5}, size=96, seed=3, classes=ALL_SUBTYPES, layout="manifest"))
    registry = root / "registry"
    entry = train_classifier(TrainConfig(data=str(data), task="auto", out=str(registry), size=64, epochs=2, batch_size=16,
                                         tta=2, device="cpu", patience=5, lung_focus_films=4), log=lambda s: None)
    build_index(entry, data, IndexConfig(device="cpu", projections=("tsne_2d",)), log=lambda s: None)
    assert anomaly_main(["--data", str(data), "--out", str(registry), "--detector", "features", "--feature-size", "64",
                         "--feature-methods", "mahalanobis"]) == 0
    return data, registry


@pytest.fixture(scope="module")
def four_class(tmp_path_factory) -> tuple[Path, Path]:
    return build_four_class(tmp_path_factory.mktemp("four-class"))


def test_the_covid_like_finding_is_bilateral_and_lower_zone() -> None:
    for seed in range(4):
        ph = make_phantom("covid", seed, 128)
        rows, cols = np.nonzero(ph.lesion_mask)
        assert len(rows) > 0.01 * 128 * 128
        assert (cols < 64).any() and (cols >= 64).any(), "one lesion per lung"
        lung_rows = np.nonzero(ph.lung_mask)[0]
        assert rows.mean() > lung_rows.mean(), "below the middle of the lung fields"
    assert (make_phantom("virus", 7, 64).image == make_phantom("virus", 7, 64).image).all()


def test_the_card_stores_task_classes_and_normal_class(four_class) -> None:
    _, registry = four_class
    clf = select(list_entries(registry), "classifier", "covid-phantoms")
    assert clf is not None
    info = clf.info
    assert info.task == "covid-phantoms" and info.classes == CLASSES and info.num_outputs == 4
    assert info.normal_class == "normal" and info.dataset.layout == "manifest"
    test = info.metric("test")
    assert set(test["per_class_accuracy"]) == set(CLASSES) and np.asarray(test["confusion"]).shape == (4, 4)
    assert info.has_index and info.metric("test_knn_majority") is not None
    det = [s for s in list_entries(registry) if s.ok and s.card["kind"] == "detector"]
    assert det and det[0].card["normal_class"] == "normal" and det[0].card["metrics"]["test"]["auroc"] is not None


def test_predictor_gives_four_probabilities(four_class) -> None:
    from cxr_core.imaging import read_gray
    from cxr_core.predict import Predictor

    data, registry = four_class
    pred = Predictor.from_registry(str(registry)).predict(read_gray(next((data / "test").rglob("*.png"))))
    (task, res), = pred.results.items()
    assert task == "covid-phantoms" and list(res.as_dict) == list(CLASSES)
    assert sum(res.as_dict.values()) == pytest.approx(1.0, abs=1e-5)


PAGES = ["home.py", "pages/1_Predict.py", "pages/2_Embedding_explorer.py", "pages/3_Anomaly_threshold.py",
         "pages/4_Explain.py", "pages/5_Models_and_data.py", "pages/6_Worklist.py"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_serves_a_registry_with_only_a_four_class_model(four_class, page, monkeypatch) -> None:
    _, registry = four_class
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(str(ROOT / page), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "No usable classifier" not in " ".join(w.value for w in at.warning)


def test_predict_page_shows_the_four_classes(four_class, monkeypatch) -> None:
    data, registry = four_class
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(str(ROOT / "pages/1_Predict.py"), default_timeout=300).run()
    image = next((data / "test" / "covid").glob("*.png"))
    at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "normal / bacteria / covid / virus" in [h.value for h in at.subheader]
    bars = [p.proto.text for p in at.get("progress")]
    assert [b.split(":")[0] for b in bars[:4]] == list(CLASSES)


def test_explorer_and_models_pages_use_the_class_names(four_class, monkeypatch) -> None:
    _, registry = four_class
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(str(ROOT / "pages/2_Embedding_explorer.py"), default_timeout=300).run()
    names = {str(t.get("name")).split(" (")[0] for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]}
    assert set(CLASSES) <= names, names
    at = AppTest.from_file(str(ROOT / "pages/5_Models_and_data.py"), default_timeout=300).run()
    cm = [c for c in at.get("plotly_chart") if "confusion" in c.proto.spec.lower() or '"z"' in c.proto.spec]
    assert cm, "no confusion matrix"


if os.environ.get("CXR_FOUR_CLASS_KEEP"):  # development: keep a built registry for the browser test's shortcut
    def test_keep_registry(four_class) -> None:
        import shutil

        shutil.copytree(four_class[1], os.environ["CXR_FOUR_CLASS_KEEP"], dirs_exist_ok=True)
