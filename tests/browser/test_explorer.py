"""Embedding explorer in a browser: click a point → its image and neighbours; box select → matching gallery."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from bench.browser import (
    CHART,
    StreamlitServer,
    act,
    box_select,
    box_with_clear_edges,
    errors_on_screen,
    isolated_point,
    map_points,
    open_page,
)

pytestmark = pytest.mark.browser

def _open_explorer(server: StreamlitServer, page) -> None:
    open_page(page, server.url, "Embedding_explorer")
    assert not errors_on_screen(page)
    try:  # plotly's chunk loads lazily: the chart can appear after the run has finished
        page.locator(f"{CHART} .js-plotly-plot").first.wait_for(timeout=60_000)
    except Exception:
        body = page.locator("[data-testid='stMain']").inner_text()
        pytest.fail(f"the explorer shows no map:\n{body[:1500]}")


def _click_point_and_check(page) -> None:
    points, plot = map_points(page)
    x, y, row = isolated_point(points, plot)
    page.mouse.move(x, y)
    page.wait_for_timeout(300)  # plotly's hover must find the point before the click
    act(page, lambda: page.mouse.click(x, y))
    assert not errors_on_screen(page)
    main = page.locator("[data-testid='stMain']")
    expect(main.get_by_text(re.compile(rf"^Row {row} · patient")), f"row {row} not shown after the click").to_have_count(1)
    k = int(page.get_by_label("K", exact=True).input_value())
    expect(main.get_by_text(re.compile(rf"{k} nearest reference images"))).to_have_count(1)
    # The clicked image itself and its K neighbour thumbnails.
    expect(main.locator("[data-testid='stImage'] img")).to_have_count(k + 1)


def test_click_a_point_shows_its_image_and_neighbours(demo_app: StreamlitServer, page):
    _open_explorer(demo_app, page)  # the map's own default tool, as a user finds it
    _click_point_and_check(page)


def test_box_select_gallery_matches_the_points_inside(demo_app: StreamlitServer, page):
    _open_explorer(demo_app, page)
    points, plot = map_points(page)
    bx0, by0, bx1, by1, inside = box_with_clear_edges(points, plot)
    box_select(page, (bx0, by0, bx1, by1))  # plotly's "Box Select" tool, dragged with the mouse
    assert not errors_on_screen(page)
    main = page.locator("[data-testid='stMain']")
    shown = main.get_by_text(re.compile(r"^[\d,]+ images selected$"))
    if len(inside) == 1:
        assert main.get_by_text(re.compile(r"^Row \d+ · patient")).count() == 1
        return
    assert shown.count() == 1, f"no selection summary; expected {len(inside)} rows"
    n = int(shown.inner_text().split()[0].replace(",", ""))
    assert n == len(inside), f"page says {n} selected, {len(inside)} points lie inside the box"
    # Images arrive after the run's deltas: let the count settle instead of reading it once.
    expect(main.locator("[data-testid='stImage'] img")).to_have_count(min(n, 48), timeout=30_000)
