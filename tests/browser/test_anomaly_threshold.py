"""Anomaly threshold in a browser: the slider moves the operating point, Save writes the card on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, act, errors_on_screen, mark, open_page, settle

pytestmark = pytest.mark.browser


def read_confusion(page, timeout_s: float = 60.0) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) from the confusion-matrix table (the grid's accessible copy of its canvas).

    The grid fills that copy after it has drawn, and only once it is on screen: scroll it into
    view and poll, or a loaded machine reads an empty table.
    """
    import time

    grid = page.locator("[data-testid='stDataFrame']").filter(has_text="actual normal").last
    grid.scroll_into_view_if_needed()
    deadline = time.monotonic() + timeout_s
    while True:
        rows = grid.locator("table[role='grid'] tbody tr").evaluate_all(
            "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent.trim()))"
        )
        by_name = {r[0]: r[1:] for r in rows if r}
        cells = [by_name.get("actual normal", []), by_name.get("actual pneumonia", [])]
        if all(len(c) == 2 and all(v.isdigit() for v in c) for c in cells):
            (tn, fp), (fn, tp) = ([int(v) for v in c] for c in cells)
            return tn, fp, fn, tp
        assert time.monotonic() < deadline, f"no confusion matrix in the table after {timeout_s:.0f} s: {rows}"
        page.wait_for_timeout(250)


def threshold_slider(page):
    return page.locator("[data-testid='stSlider']").filter(has_text="Threshold").get_by_role("slider")


def _value(page) -> float:
    return float(threshold_slider(page).input_value())


def selected_entry(page) -> str:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Detector").get_by_role("combobox")
    return box.input_value().rsplit(" · ", 1)[-1].strip()


def _card(registry: Path, entry_id: str) -> dict:
    return json.loads((registry / entry_id / "card.json").read_text())


def move_slider(page, key: str, presses: int) -> None:
    """Key presses on the focused slider thumb, then wait until every rerun they caused is over."""
    thumb = threshold_slider(page)
    thumb.focus()
    since = mark(page)
    for _ in range(presses):
        thumb.press(key)
    # Several presses can queue several reruns: a quiet second means the last one has drawn.
    settle(page, since, quiet_ms=1000)


def test_slider_changes_confusion_matrix_and_save_writes_card(demo_app: StreamlitServer, demo_registry: Path, page):
    from cxr_core.registry import update_card

    open_page(page, demo_app.url, "Anomaly_threshold")
    assert not errors_on_screen(page)
    entry_id = selected_entry(page)
    original = _card(demo_registry, entry_id)
    saved_before = float(original["threshold"])
    slider = threshold_slider(page)
    lo, hi = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    value0 = _value(page)
    cm0 = read_confusion(page)
    n = sum(cm0)
    assert n > 2

    # To the far end away from the saved value: flagged counts (fp + tp) move monotonically with it.
    up = value0 < (lo + hi) / 2
    move_slider(page, "End" if up else "Home", 1)
    value1 = _value(page)
    cm1 = read_confusion(page)
    assert (value1 > value0) if up else (value1 < value0), (value0, value1)
    assert sum(cm1) == n
    assert cm1 != cm0, f"confusion matrix unchanged after moving the threshold {value0} → {value1}: {cm1}"
    flagged0, flagged1 = cm0[1] + cm0[3], cm1[1] + cm1[3]
    assert (flagged1 < flagged0) if up else (flagged1 > flagged0), (cm0, cm1)
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Flagged").inner_text()
    assert f"{flagged1} / {n}" in metric, metric

    # Arrow keys: one slider step per press, a few dozen steps back from the end.
    move_slider(page, "ArrowLeft" if up else "ArrowRight", 40)
    value2 = _value(page)
    assert (value2 < value1) if up else (value2 > value1), (value1, value2)
    assert not errors_on_screen(page)

    try:
        act(page, page.get_by_role("button", name="Save threshold").click)
        expect(page.locator("[data-testid='stAlert']").filter(has_text="Saved threshold")).to_have_count(1)
        saved_after = float(_card(demo_registry, entry_id)["threshold"])
        assert not math.isclose(saved_after, saved_before), (saved_before, saved_after)
        assert math.isclose(saved_after, value2, rel_tol=1e-6, abs_tol=1e-9), (saved_after, value2)
        assert _card(demo_registry, entry_id)["threshold_source"]["set_on_page"] is True
    finally:
        # Other tests share this registry: put the card back as it was.
        update_card(demo_registry / entry_id, lambda c: (c.clear(), c.update(original)))
