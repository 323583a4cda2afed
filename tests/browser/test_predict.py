"""Predict in a browser: upload a file through the real uploader and read what the page shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, errors_on_screen, open_page, upload
from tests.predict_reference import check_shown_prediction, reference_prediction

pytestmark = pytest.mark.browser

def _predict(server: StreamlitServer, page, image: Path) -> None:
    open_page(page, server.url, "Predict")
    upload(page, image)
    errors = errors_on_screen(page)
    assert not errors, errors


def _check_prediction(page, registry: Path, image: Path) -> None:
    """What the page shows equals ``Predictor.predict`` on the same file with the server's registry."""
    metrics = page.locator("[data-testid='stMetric']").filter(has_text="Prediction")
    assert metrics.count() == 2, "expected a binary and a 3-class prediction"
    labels = [v.strip() for v in metrics.locator("[data-testid='stMetricValue']").all_inner_texts()]
    bars = [t.strip() for t in page.locator("[data-testid='stProgress']").all_inner_texts()]
    check_shown_prediction(labels, bars, reference_prediction(registry, image))


def _check_gradcam(page) -> None:
    expect(page.get_by_role("heading", name=re.compile("class activation map"))).to_have_count(1)
    caption = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^HiResCAM for .+ · layer"))
    expect(caption, "no class activation map (HiResCAM by default) with its caption").to_have_count(1)
    img = page.locator("[data-testid='stImageContainer']").filter(has=caption).locator("img")
    _wait_loaded(img)
    box = img.bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50, box


def _wait_loaded(img) -> None:
    """Scroll an image into view and wait until the browser has decoded it (it has no size before)."""
    img.scroll_into_view_if_needed()
    img.page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)


def _check_neighbours(page) -> None:
    expect(page.get_by_role("heading", name=re.compile("similar|neighbo", re.I))).to_have_count(1)
    k = int(page.get_by_label("Neighbours (K)").input_value())
    # Each neighbour thumbnail is captioned with its label, split and cosine distance; the comparison
    # section's "Reference N: ..." picture below carries a distance too and is not one of them.
    thumbs = page.locator("[data-testid='stImageContainer']").filter(
        has=page.locator("[data-testid='stImageCaption']", has_text=re.compile(r"^(?!Reference \d).*d=\d\.\d{3}")))
    expect(thumbs).to_have_count(k)
    for img in thumbs.locator("img").all():
        _wait_loaded(img)


def test_predict_synthetic_phantom(demo_app: StreamlitServer, page, synthetic_data: Path):
    image = next((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))
    _predict(demo_app, page, image)
    _check_prediction(page, demo_app.registry, image)


def test_predict_real_cxr_shows_label_probabilities_and_gradcam(mini_app: StreamlitServer, page, cxr_mini: Path):
    image = next((cxr_mini / "test" / "PNEUMONIA").glob("*.jpeg"))
    _predict(mini_app, page, image)
    _check_prediction(page, mini_app.registry, image)
    _check_gradcam(page)


def test_predict_real_cxr_shows_neighbours(mini_app: StreamlitServer, page, cxr_mini: Path):
    image = next((cxr_mini / "test" / "NORMAL").glob("*.jpeg"))
    _predict(mini_app, page, image)
    _check_neighbours(page)


def test_predict_garbage_upload_is_refused_in_words(demo_app: StreamlitServer, page, tmp_path: Path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"this is not an image")
    _predict(demo_app, page, bad)
    alerts = page.locator("[data-testid='stAlert']").all_inner_texts()
    assert any("cannot be used" in a for a in alerts), alerts
    assert page.locator("[data-testid='stMetric']").filter(has_text="Prediction").count() == 0
