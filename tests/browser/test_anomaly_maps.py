"""Anomaly maps in a browser: beside the class activation map on Predict, and for the example films on
the Anomaly threshold page (feature reconstruction detectors, issue 15)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, errors_on_screen, open_page, upload, wait_for_app_run

pytestmark = pytest.mark.browser


def _wait_loaded(img) -> dict:
    img.scroll_into_view_if_needed()
    img.page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
    box = img.bounding_box()
    assert box and box["width"] > 40 and box["height"] > 40, box
    return box


def _cards(registry: Path) -> dict[str, dict]:
    out = {}
    for d in registry.iterdir():
        f = d / "card.json"
        if f.is_file():
            card = json.loads(f.read_text())
            if card.get("task") == "anomaly":
                out[d.name] = card
    return out


def test_predict_shows_the_anomaly_map_beside_the_class_activation_map(demo_app: StreamlitServer, page,
                                                                       synthetic_data: Path):
    cards = _cards(demo_app.registry)
    assert any("feature_recon" in c for c in cards.values()), "the demo build fits a feature reconstruction detector"
    image = next((synthetic_data / "test" / "PNEUMONIA").glob("*.png"))
    open_page(page, demo_app.url, "Predict")
    upload(page, image)
    assert not errors_on_screen(page)
    amap = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^anomaly map"))
    expect(amap, "the anomaly map of the best feature reconstruction detector").to_have_count(1)
    cam = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"\(class activation map\)$"))
    expect(cam).to_have_count(1)
    a = _wait_loaded(page.locator("[data-testid='stImageContainer']").filter(has=amap).locator("img"))
    c = _wait_loaded(page.locator("[data-testid='stImageContainer']").filter(has=cam).locator("img"))
    # Beside: one row, the map on the left of the CAM, the same height.
    assert abs(a["y"] - c["y"]) < 5 and a["x"] + a["width"] <= c["x"] + 1, (a, c)
    assert abs(a["height"] - c["height"]) < 5, (a, c)


def test_threshold_page_offers_every_detector_and_maps_the_examples(demo_app: StreamlitServer, page):
    cards = _cards(demo_app.registry)
    best = max(cards, key=lambda i: cards[i]["metrics"]["val"]["auroc"])
    open_page(page, demo_app.url, "Anomaly_threshold")
    assert not errors_on_screen(page)
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Detector").get_by_role("combobox")
    shown = box.input_value()
    assert shown.startswith(cards[best]["name"]) and shown.endswith(f" · best on validation · {best}"), shown
    box.click()
    options = page.get_by_role("option")
    expect(options).to_have_count(len(cards))
    texts = options.all_inner_texts()
    for kind in ("pixel reconstruction", "feature reconstruction", "feature distance"):
        assert any(f" · {kind} · " in t for t in texts), (kind, texts)
    recon = next(t for t in texts if " · feature reconstruction · " in t)
    options.filter(has_text=recon).first.click()
    expect(page.get_by_text(re.compile(r"^Feature reconstruction: "))).to_have_count(1)
    maps = page.locator("[data-testid='stImageCaption']").filter(has_text=re.compile(r"^anomaly map$"))
    # The examples render one by one (each film is scored): wait for films on both sides of the threshold.
    expect(maps.first).to_be_visible(timeout=120_000)
    expect(maps.nth(1), "a map for films on both sides of the threshold").to_be_visible(timeout=120_000)
    containers = page.locator("[data-testid='stImageContainer']").filter(
        has=page.locator("[data-testid='stImageCaption']", has_text=re.compile(r"^anomaly map$")))
    assert containers.count() >= 2
    for i in range(min(containers.count(), 6)):
        _wait_loaded(containers.nth(i).locator("img"))
    # The live panel still answers: the confusion matrix counts every validation film (once the run is
    # over: until then the previous detector's panel may still be in the page).
    wait_for_app_run(page)
    expect(page.locator(".cxr-thr [data-cm='tn']")).to_have_count(1, timeout=60_000)
    cells = [page.locator(f".cxr-thr [data-cm='{k}']").inner_text() for k in ("tn", "fp", "fn", "tp")]
    recon_card = next(c for c in cards.values() if recon.startswith(c["name"]))
    assert sum(int(x) for x in cells) == recon_card["metrics"]["val"]["n"]
    assert not errors_on_screen(page)
