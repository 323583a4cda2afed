"""Page tests (AppTest): home page with empty and built registries, Predict with a real upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

TIMEOUT = 120


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [w.value for w in at.warning] + [e.value for e in at.error]
    parts += [i.value for i in at.info] + [s.value for s in at.subheader] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def test_every_page_draws_its_frame_once():
    """Tab title, title and banner come from ``pages.ui.frame.page_frame``, called once per page."""
    from pages.ui.navigation import page_files

    for page in [REPO / "home.py", *page_files()]:
        src = page.read_text()
        assert src.count("page_frame(") == 1, page.name
        assert "set_page_config" not in src and "demo_banner()" not in src, page.name


def test_home_with_empty_registry_offers_the_demo(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CXR_REGISTRY", str(tmp_path / "empty"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "no usable classifier" in _texts(at)
    assert any("Build the demo registry" in b.label for b in at.button)


def test_home_lists_entries_and_broken_ones(tiny_registry: Path, tmp_path: Path, monkeypatch):
    import shutil

    reg = tmp_path / "reg"
    shutil.copytree(tiny_registry, reg)
    victim = sorted(p for p in reg.iterdir() if p.is_dir())[0]
    (victim / "weights.safetensors").write_bytes(b"broken")
    monkeypatch.setenv("CXR_REGISTRY", str(reg))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert f"Entry `{victim.name}` is broken" in _texts(at)
    assert len(at.dataframe) == 1


def _predict_page(registry: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def test_predict_page_with_a_real_cxr(tiny_registry: Path, cxr_mini: Path, monkeypatch):
    from tests.predict_reference import check_shown_prediction, reference_prediction

    at = _predict_page(tiny_registry, monkeypatch)
    img = next((cxr_mini / "test" / "PNEUMONIA").glob("*.jpeg"))
    at.file_uploader(key="upload").set_value((img.name, img.read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    labels = [str(m.value) for m in at.metric if m.label == "Prediction"]
    bars = [str(b.proto.text) for b in at.get("progress")]
    # The same file through Predictor.predict: same labels, same probabilities to 0.1 %, each model's summing to 100 %.
    check_shown_prediction(labels, bars, reference_prediction(tiny_registry, img))
    assert any("P(pneumonia)" in c.value for c in at.caption)


def test_predict_page_rejects_garbage_and_keeps_working(tiny_registry: Path, synthetic_data: Path, monkeypatch):
    at = _predict_page(tiny_registry, monkeypatch)
    at.file_uploader(key="upload").set_value(("scan.png", b"this is not an image", "image/png"))
    at.run()
    assert not at.exception
    assert "cannot be used" in _texts(at)
    good = next((synthetic_data / "test" / "NORMAL").glob("*.png"))
    at.file_uploader(key="upload").set_value((good.name, good.read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    assert len(at.metric) == 2


#: What each page says, as a warning, when the registry folder does not exist (a new page needs a line).
NO_REGISTRY_WARNING = {
    "home.py": "The registry has no usable classifier yet.",
    "Predict": "No usable classifier in the registry at `{root}`",
    "Embedding_explorer": "No usable classifier in the registry at `{root}`",
    "Anomaly_threshold": "No anomaly detector in the registry.",
    "Explain": "No usable classifier in the registry at `{root}`",
    "Models_and_data": "No usable entries in the registry at `{root}`",
    "Worklist": "No usable classifier in the registry at `{root}`",
}


def _every_page() -> list[str]:
    from pages.ui.navigation import page_files

    return ["home.py", *(str(p.relative_to(REPO)) for p in page_files())]


@pytest.mark.parametrize("page", _every_page())
def test_pages_without_a_registry_say_so(page: str, tmp_path: Path, monkeypatch):
    from pages.ui.navigation import url_path

    root = tmp_path / "none"
    monkeypatch.setenv("CXR_REGISTRY", str(root))
    key = page if page == "home.py" else url_path(REPO / page)
    assert key in NO_REGISTRY_WARNING, f"{page}: add what it says without a registry to NO_REGISTRY_WARNING"
    at = AppTest.from_file(str(REPO / page), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    want = NO_REGISTRY_WARNING[key].format(root=root.resolve())
    warnings = [str(w.value) for w in at.warning]
    assert any(want in w for w in warnings), f"{page}: {want!r} not in its warnings {warnings}"
