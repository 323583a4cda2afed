"""A registry holding only a four-class model (normal / bacteria / virus / COVID-like) in chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, errors_on_screen, open_page, upload
from tests.test_four_class import CLASSES, build_four_class

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def four_class_app(tmp_path_factory):
    data, registry = build_four_class(tmp_path_factory.mktemp("four-class-browser"))
    with StreamlitServer(registry) as srv:
        yield srv, data


def test_predict_shows_the_four_class_model(four_class_app, page) -> None:
    server, data = four_class_app
    open_page(page, server.url, "Predict")
    image: Path = next((data / "test" / "covid").glob("*.png"))
    upload(page, image)
    assert not errors_on_screen(page), errors_on_screen(page)
    expect(page.get_by_role("heading", name="normal / bacteria / covid / virus")).to_have_count(1)
    bars = [t.strip() for t in page.locator("[data-testid='stProgress']").all_inner_texts()]
    assert [b.split(":")[0] for b in bars[:4]] == list(CLASSES), bars
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Prediction")
    expect(metric).to_have_count(1)
    assert metric.locator("[data-testid='stMetricValue']").inner_text().strip() in CLASSES
    expect(page.get_by_role("heading", name=re.compile("class activation map"))).to_have_count(1)
    caption = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^HiResCAM for .+ · layer"))
    expect(caption, "no class activation map for the four-class model").to_have_count(1)
