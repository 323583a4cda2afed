"""Every page of the running app loads in chromium with no exception on screen and none in the server log."""

from __future__ import annotations

import pytest

from bench.browser import StreamlitServer, errors_on_screen, open_page, page_files, url_path

pytestmark = pytest.mark.browser

PAGES = [""] + [url_path(p) for p in page_files()]


def _check_page(server: StreamlitServer, page, path: str) -> None:
    before = len(server.log_text())
    open_page(page, server.url, path)
    assert page.locator("h1").count() >= 1, f"/{path}: no title rendered"
    errors = errors_on_screen(page)
    new_log = server.log_text()[before:]
    assert not errors, f"/{path} shows an error: {errors}\nserver log:\n{new_log[-3000:]}"
    assert "Traceback" not in new_log, f"/{path} raised in the server:\n{new_log[-3000:]}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p or "home")
def test_page_loads_clean_on_the_synthetic_demo(demo_app: StreamlitServer, page, path: str):
    _check_page(demo_app, page, path)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p or "home")
def test_page_loads_clean_on_cxr_mini_models(mini_app: StreamlitServer, page, path: str):
    _check_page(mini_app, page, path)


def test_navigation_lists_every_page(demo_app: StreamlitServer, page):
    open_page(page, demo_app.url)
    links = page.locator("[data-testid='stSidebarNav'] a").all_inner_texts()
    for p in page_files():
        assert url_path(p).replace("_", " ") in links, f"{p.name} missing from the sidebar: {links}"
