"""The committed release registry in a real browser: a real film gets every Predict section.

The app serves ``release/kermany-224`` as ``make run`` does on a fresh clone; the uploaded film is
one of cxr-mini's test films (skipped locally, failed in CI, when ``../shared/data`` is absent).
Saved settings go to a settings file of the test's own, never to the committed release.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, errors_on_screen, open_page, upload
from cxr_core.registry import release_dir
from tests.predict_reference import check_shown_prediction, reference_prediction

pytestmark = pytest.mark.browser
RELEASE = release_dir() / "kermany-224"


@pytest.fixture(scope="module")
def release_app(tmp_path_factory, browser) -> Iterator[StreamlitServer]:
    settings = tmp_path_factory.mktemp("settings") / "settings.json"
    with StreamlitServer(RELEASE, env={"CXR_SETTINGS": str(settings)}) as srv:
        yield srv


def _loaded(img) -> None:
    img.scroll_into_view_if_needed()
    img.page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)


def test_release_predicts_a_real_film_with_map_neighbours_and_anomaly_scores(release_app, page, cxr_mini: Path):
    image = sorted((cxr_mini / "test" / "NORMAL").glob("*.jpeg"))[0]
    open_page(page, release_app.url, "Predict")
    expect(page.get_by_text("trained on real pediatric chest X-rays", exact=False).first).to_be_visible()
    upload(page, image)
    assert not errors_on_screen(page), errors_on_screen(page)

    # Label and probabilities: what Predictor.predict gives on the same file with the release.
    metrics = page.locator("[data-testid='stMetric']").filter(has_text="Prediction")
    expect(metrics).to_have_count(2)
    labels = [v.strip() for v in metrics.locator("[data-testid='stMetricValue']").all_inner_texts()]
    bars = [t.strip() for t in page.locator("[data-testid='stProgress']").all_inner_texts()]
    check_shown_prediction(labels, bars, reference_prediction(RELEASE, image))

    # The class activation map.
    caption = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^HiResCAM for .+ · layer"))
    expect(caption).to_have_count(1)
    _loaded(page.locator("[data-testid='stImageContainer']").filter(has=caption).locator("img"))

    # Seven real reference films (the binary index's K), each captioned with label and distance (the
    # comparison section's "Reference N: ..." picture is not one of them).
    expect(page.get_by_role("heading", name=re.compile("Similar reference images"))).to_have_count(1)
    thumbs = page.locator("[data-testid='stImageContainer']").filter(
        has=page.locator("[data-testid='stImageCaption']", has_text=re.compile(r"^(?!Reference \d).*d=\d\.\d{3}")))
    expect(thumbs).to_have_count(7)
    for img in thumbs.locator("img").all():
        _loaded(img)

    # Anomaly scores from the release's healthy-only detectors.
    expect(page.get_by_role("heading", name=re.compile("Out of the ordinary"))).to_have_count(1)
    scores = page.locator("[data-testid='stMetric']").filter(has_text=re.compile("Pretrained features"))
    assert scores.count() >= 1, "no anomaly score on the page"
    for text in scores.locator("[data-testid='stMetricValue']").all_inner_texts():
        assert re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", text.strip()), text
