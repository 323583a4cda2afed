"""Anomaly threshold in a browser: the slider moves the operating point, Save writes the card on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, act, errors_on_screen, mark, open_page, settle, wait_for_app_run

pytestmark = pytest.mark.browser


def read_confusion(page) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) as the live panel shows them."""
    cells = [page.locator(f".cxr-thr [data-cm='{k}']").inner_text() for k in ("tn", "fp", "fn", "tp")]
    assert all(c.isdigit() for c in cells), cells
    tn, fp, fn, tp = (int(c) for c in cells)
    return tn, fp, fn, tp


def threshold_slider(page):
    return page.locator(".cxr-thr .thr-range")


def _value(page) -> float:
    return float(threshold_slider(page).input_value())


def selected_entry(page) -> str:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Detector").get_by_role("combobox")
    return box.input_value().rsplit(" · ", 1)[-1].strip()


def _card(registry: Path, entry_id: str) -> dict:
    return json.loads((registry / entry_id / "card.json").read_text())


def _table(registry: Path, entry_id: str):
    from cxr_core.anomaly import ThresholdTable

    with np.load(registry / entry_id / "scores.npz", allow_pickle=False) as z:
        val = z["splits"] == "val"
        return ThresholdTable(z["labels"][val], z["scores"][val])


def move_slider(page, key: str, presses: int) -> None:
    """Key presses on the focused slider, then wait until every fragment rerun their commits caused is over."""
    slider = threshold_slider(page)
    slider.focus()
    since = mark(page)
    for _ in range(presses):
        slider.press(key)
    # Several presses can queue several reruns: a quiet second means the last one has drawn.
    settle(page, since, quiet_ms=1000)


def test_slider_changes_confusion_matrix_and_save_writes_card(demo_app: StreamlitServer, demo_registry: Path, page):
    from cxr_core.registry import update_card

    open_page(page, demo_app.url, "Anomaly_threshold")
    assert not errors_on_screen(page)
    entry_id = selected_entry(page)
    original = _card(demo_registry, entry_id)
    table = _table(demo_registry, entry_id)
    saved_before = float(original["threshold"])
    slider = threshold_slider(page)
    lo, hi = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    value0 = _value(page)
    cm0 = read_confusion(page)
    n = sum(cm0)
    assert n == table.n_pos + table.n_neg
    assert cm0 == table.counts(saved_before), (cm0, table.counts(saved_before))

    # To the far end away from the saved value: flagged counts (fp + tp) move monotonically with it.
    up = value0 < (lo + hi) / 2
    move_slider(page, "End" if up else "Home", 1)
    value1 = _value(page)
    cm1 = read_confusion(page)
    assert (value1 > value0) if up else (value1 < value0), (value0, value1)
    assert cm1 != cm0, f"confusion matrix unchanged after moving the threshold {value0} → {value1}: {cm1}"
    flagged0, flagged1 = cm0[1] + cm0[3], cm1[1] + cm1[3]
    assert (flagged1 < flagged0) if up else (flagged1 > flagged0), (cm0, cm1)
    assert page.locator(".cxr-thr [data-m='flagged']").inner_text() == f"{flagged1} / {n}"

    # Arrow keys: one step per press; after each, the browser's counts are Python's at that value.
    slider.focus()
    for _ in range(6):
        for _ in range(7):
            slider.press("ArrowLeft" if up else "ArrowRight")
        v = _value(page)
        assert read_confusion(page) == table.counts(v), (v, read_confusion(page), table.counts(v))
        m = table.metrics(v)
        shown = page.locator(".cxr-thr [data-m='sensitivity']").inner_text()
        assert shown == ("n/a" if not np.isfinite(m["sensitivity"]) else f"{100 * m['sensitivity']:.1f}%"), shown
    value2 = _value(page)
    assert (value2 < value1) if up else (value2 > value1), (value1, value2)
    slider.press("ArrowLeft" if up else "ArrowRight")  # one more commit
    value2 = _value(page)
    shown = page.locator(".cxr-thr .thr-number").input_value()  # the value at the page's precision
    # Wait for the server to hold the last committed value (the Save label shows it). Not a rerun
    # count: a commit that lands during a run restarts that run, and the page never leaves "running".
    save = page.get_by_role("button", name=f"Save threshold {shown}", exact=True)
    expect(save).to_be_visible(timeout=60_000)
    wait_for_app_run(page)  # the label shows mid-run; a click during a run would only restart it
    assert not errors_on_screen(page)

    try:
        act(page, save.click)
        expect(page.locator("[data-testid='stAlert']").filter(has_text="Saved threshold")).to_have_count(1)
        saved_after = float(_card(demo_registry, entry_id)["threshold"])
        assert not math.isclose(saved_after, saved_before), (saved_before, saved_after)
        assert math.isclose(saved_after, value2, rel_tol=1e-6, abs_tol=1e-9), (saved_after, value2)
        assert _card(demo_registry, entry_id)["threshold_source"]["set_on_page"] is True
        assert _value(page) == value2  # the rerun after Save did not pull the slider back

        # A suggestion button sets the threshold on the server: the panel adopts it.
        sug = next(iter(original["thresholds"]["suggestions"].values()))
        want = min(max(float(sug["value"]), lo), hi)
        act(page, page.get_by_role("button", name=f"{sug['label']}: {sug['value']:.4g}").click)
        assert float(page.locator(".cxr-thr").get_attribute("data-threshold")) == pytest.approx(want)
        assert read_confusion(page) == table.counts(want)
    finally:
        # Other tests share this registry: put the card back as it was.
        update_card(demo_registry / entry_id, lambda c: (c.clear(), c.update(original)))
