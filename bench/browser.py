"""Drive the app in a real browser: start ``streamlit run app.py``, launch Debian's chromium, wait for reruns.

Shared by the browser tests (``tests/browser``), the screenshots (``python -m bench.screenshots``) and
the browser benchmarks (``python -m bench.app_bench``). Chromium is the distribution's
``/usr/bin/chromium`` (``make browser-deps``), never a browser that Playwright downloads: nothing here
touches the network, and everything is skipped with a reason when that binary is absent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pages.ui.navigation import page_files, url_path  # noqa: F401  (re-exported for the tests and benches)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 1000}
APP_SELECTOR = "[data-testid='stApp']"
#: Where Streamlit draws an uncaught exception (with any showErrorDetails setting).
EXCEPTION_SELECTOR = "[data-testid='stException']"
ERROR_WORDS = ("Traceback (most recent call last)", "This app has encountered an error")


def chromium_missing_reason() -> str | None:
    """Why browser work cannot run here, or None when it can."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is absent (install Debian's chromium: `make browser-deps` as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StreamlitServer:
    """``streamlit run app.py`` on 127.0.0.1 with its own registry; the log goes to a file for diagnosis."""

    registry: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    start_seconds: float | None = None
    #: Keep the log file after stop() (it is deleted otherwise; CXR_KEEP_LOGS=1 keeps every log).
    keep_log: bool = field(default_factory=lambda: bool(os.environ.get("CXR_KEEP_LOGS")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> StreamlitServer:
        env = dict(os.environ)
        env.update({
            "CXR_REGISTRY": str(self.registry), "PYTHONUNBUFFERED": "1",
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        })
        env.update(self.env)
        fd, log = tempfile.mkstemp(prefix=f"streamlit-{self.port}-", suffix=".log")
        self.log_path = Path(log)
        streamlit = Path(sys.executable).with_name("streamlit")
        cmd = [str(streamlit), "run", "app.py", "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--server.runOnSave", "false"]
        t0 = time.perf_counter()
        # Own process group: stop() ends the server and anything it started, and nothing else.
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fd, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.keep_log = True
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        self.start_seconds = time.perf_counter() - t0
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.keep_log = True
        self.stop()
        raise TimeoutError(f"streamlit did not answer /_stcore/health within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.proc = None
        if self.log_path is not None and not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def __enter__(self) -> StreamlitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium through Playwright (yields the ``Browser``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


#: Installed before any page script: stamps DOM changes in the main area and script-state flips.
INSTRUMENT_JS = """
(() => {
  // Observes the whole document, not the elements themselves: React may replace the app root.
  const S = window.__cxr = {events: [], lastMut: 0, key: null};
  const state = () => {
    const app = document.querySelector("[data-testid='stApp']");
    return app ? app.getAttribute('data-test-script-state') : null;
  };
  const inMain = (node) => {
    const el = node && (node.nodeType === 1 ? node : node.parentElement);
    return !!(el && el.closest && el.closest("[data-testid='stMain']"));
  };
  let last = null;
  const push = (now, s) => { if (s !== last) { S.events.push([now, s]); last = s; } };
  new MutationObserver((muts) => {
    const now = performance.now();
    // Old values first: a run that starts and ends within one batch still leaves its 'running'.
    for (const m of muts) {
      if (m.type === 'attributes' && m.attributeName === 'data-test-script-state') push(now, m.oldValue);
    }
    push(now, state());
    if (muts.some(m => inMain(m.target))) S.lastMut = now;
  }).observe(document, {subtree: true, childList: true, attributes: true, characterData: true,
                        attributeOldValue: true});
  document.addEventListener('keydown', () => { S.key = performance.now(); }, true);
})();
"""


def mark(page: Any) -> float:
    return float(page.evaluate("performance.now()"))


def settle(page: Any, since: float, quiet_ms: float = 0, timeout_ms: float = 180_000) -> float:
    """Wait for a rerun that started after ``since`` to finish, with no stale element and ``quiet_ms`` without
    DOM changes; returns the ms from ``since`` to the last DOM change in the main area.

    Unlike :func:`wait_for_app_run` this cannot return early when the rerun starts late (a busy
    machine), and it times out when the action caused no rerun at all.
    """
    page.wait_for_function(
        """([since, quiet]) => {
          const S = window.__cxr, ev = S.events;
          const ran = ev.some(e => e[0] >= since && e[1] === 'running');
          const state = document.querySelector("[data-testid='stApp']").getAttribute('data-test-script-state');
          return ran && state === 'notRunning' && performance.now() - Math.max(S.lastMut, since) > quiet
                 && document.querySelectorAll("[data-stale='true']").length === 0;
        }""",
        arg=[since, quiet_ms], timeout=timeout_ms, polling=50,
    )
    return float(page.evaluate("(since) => Math.max(window.__cxr.lastMut, since) - since", since))




def act(page: Any, action: Any, quiet_ms: float = 0, timeout_ms: float = 180_000,
        start_timeout_ms: float = 30_000) -> float:
    """Run ``action()`` (a click, a key press...) and :func:`settle` on the rerun it causes; returns ms.

    Raises AssertionError when no rerun starts within ``start_timeout_ms`` (the app ignored the action).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if not page.evaluate("!!window.__cxr"):
        raise RuntimeError("this page has no timing instrumentation: open it from bench.browser.new_context")
    # Act on an idle app: an action landing during a run (e.g. the page's first one, slow on a busy
    # machine) restarts that run without the page ever leaving 'running', so no new run would show.
    page.wait_for_function(
        "() => document.querySelector(\"[data-testid='stApp']\")?.getAttribute('data-test-script-state') !== 'running'",
        timeout=timeout_ms, polling=50,
    )
    since = mark(page)
    action()
    try:
        page.wait_for_function(
            "(since) => window.__cxr.events.some(e => e[0] >= since && e[1] === 'running')",
            arg=since, timeout=start_timeout_ms, polling=50,
        )
    except PlaywrightTimeout:
        raise AssertionError(f"no rerun followed the action within {start_timeout_ms / 1000:.0f}s") from None
    return settle(page, since, quiet_ms, timeout_ms)


def box_select(page: Any, box: tuple[float, float, float, float], quiet_ms: float = 0,
               timeout_ms: float = 180_000) -> float:
    """Drag plotly's Box Select tool over ``box`` (x0, y0, x1, y1 in page pixels) on the first chart;
    returns the ms from releasing the mouse to the end of the rerun it causes (see :func:`act`)."""
    bx0, by0, bx1, by1 = box
    page.locator(CHART).first.hover()
    page.locator(f"{CHART} .modebar-btn[data-val='select']").first.click()
    page.mouse.move(bx0, by0)
    page.mouse.down()
    page.mouse.move((bx0 + bx1) / 2, (by0 + by1) / 2, steps=4)
    page.mouse.move(bx1, by1, steps=4)
    return act(page, page.mouse.up, quiet_ms, timeout_ms)


def new_context(browser: Any, timeout_ms: float = 120_000, **options: Any) -> Any:
    """A browser context with the standard viewport and the timing instrumentation in every page."""
    ctx = browser.new_context(**{"viewport": VIEWPORT, **options})
    ctx.set_default_timeout(timeout_ms)
    ctx.add_init_script(INSTRUMENT_JS)
    return ctx


def wait_for_app_run(page: Any, timeout_ms: float = 120_000, settle_ms: int = 150) -> None:
    """Wait until the script run the last action started has finished and no element is stale.

    Streamlit marks the app root with ``data-test-script-state``; right after an action it may not
    have flipped to ``running`` yet, so a short settle comes first (the same approach as
    Streamlit's own end-to-end tests).
    """
    page.wait_for_timeout(settle_ms)
    page.wait_for_selector(f"{APP_SELECTOR}[data-test-connection-state='CONNECTED']", timeout=timeout_ms)
    page.wait_for_selector(f"{APP_SELECTOR}[data-test-script-state='notRunning']", timeout=timeout_ms)
    page.wait_for_function("document.querySelectorAll(\"[data-stale='true']\").length === 0", timeout=timeout_ms)


def open_page(page: Any, base_url: str, path: str = "", timeout_ms: float = 180_000) -> None:
    page.goto(f"{base_url}/{path}", wait_until="domcontentloaded", timeout=timeout_ms)
    wait_for_app_run(page, timeout_ms)


def errors_on_screen(page: Any) -> list[str]:
    """Exception boxes and traceback text visible in the page (empty when the page is clean)."""
    found = [t.strip()[:500] for t in page.locator(EXCEPTION_SELECTOR).all_inner_texts()]
    body = page.locator(APP_SELECTOR).inner_text()
    found += [w for w in ERROR_WORDS if w in body]
    return found


def upload(page: Any, path: Path, timeout_ms: float = 180_000) -> None:
    """Put ``path`` into the page's (first) file uploader and wait for the rerun it causes."""
    act(page, lambda: page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(path)),
        timeout_ms=timeout_ms)


# --- plotly maps (the embedding explorer) ---------------------------------------------------

CHART = "[data-testid='stPlotlyChart']"

#: Pixel position (viewport coordinates) and row id of every map point, read from plotly's own axes.
POINTS_JS = """
(gd) => {
  const fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis, r = gd.getBoundingClientRect();
  const out = [];
  for (const tr of gd._fullData) {
    if (!tr.visible || tr.visible === 'legendonly' || !tr.customdata) continue;
    const xs = Array.from(tr.x), ys = Array.from(tr.y), cd = Array.from(tr.customdata);
    for (let i = 0; i < xs.length; i++) {
      const id = Array.isArray(cd[i]) ? cd[i][0] : cd[i];
      if (id < 0) continue;  // the upload marker
      out.push([r.left + xa._offset + xa.l2p(xs[i]), r.top + ya._offset + ya.l2p(ys[i]), id, tr.name]);
    }
  }
  return {points: out, plot: [r.left + xa._offset, r.top + ya._offset, xa._length, ya._length]};
}
"""


def map_points(page) -> tuple[list, list]:
    gd = page.locator(f"{CHART} .js-plotly-plot").first
    gd.wait_for()
    # Mouse coordinates are viewport coordinates: the whole map must be on screen.
    page.locator(CHART).first.evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(200)
    res = gd.evaluate(POINTS_JS)
    return res["points"], res["plot"]


def isolated_point(points: list, plot: list, min_gap: float = 12.0) -> tuple[float, float, int]:
    """A point well inside the plot with no other point within ``min_gap`` px (an unambiguous click)."""
    from scipy.spatial import cKDTree

    x0, y0, w, h = plot
    xy = np.array([(x, y) for x, y, _, _ in points], dtype=float)
    rows = np.array([r for _, _, r, _ in points])
    # Distance to the nearest other point (a KD-tree: 100,000 points take well under a second).
    gap = cKDTree(xy).query(xy, k=2)[0][:, 1] if len(xy) > 1 else np.full(len(xy), np.inf)
    inner = (xy[:, 0] > x0 + 20) & (xy[:, 0] < x0 + w - 20) & (xy[:, 1] > y0 + 40) & (xy[:, 1] < y0 + h - 20)
    ok = inner & (gap >= min_gap)
    assert ok.any(), "no isolated point to click on the map"
    i = int(np.argmax(np.where(ok, gap, -1.0)))
    return float(xy[i, 0]), float(xy[i, 1]), int(rows[i])


def box_with_clear_edges(points: list, plot: list, margin: float = 4.0) -> tuple[float, float, float, float, set]:
    """A box over part of the map whose edges are ``margin`` px clear of every point, with the rows inside."""
    x0, y0, w, h = plot
    xy = np.array([(x, y) for x, y, _, _ in points], dtype=float).reshape(-1, 2)
    rows = np.array([r for _, _, r, _ in points])
    x, y = xy[:, 0], xy[:, 1]
    for fx0, fy0, fx1, fy1 in ((0.2, 0.25, 0.7, 0.8), (0.1, 0.2, 0.55, 0.9), (0.4, 0.15, 0.95, 0.7),
                               (0.05, 0.1, 0.95, 0.95)):
        for shift in range(0, 40, 3):
            bx0, by0 = x0 + fx0 * w + shift, y0 + fy0 * h + shift
            bx1, by1 = x0 + fx1 * w - shift, y0 + fy1 * h - shift
            near_x = ((np.abs(x - bx0) < margin) | (np.abs(x - bx1) < margin)) & (by0 - margin < y) & (y < by1 + margin)
            near_y = ((np.abs(y - by0) < margin) | (np.abs(y - by1) < margin)) & (bx0 - margin < x) & (x < bx1 + margin)
            inside = (bx0 < x) & (x < bx1) & (by0 < y) & (y < by1)
            if not (near_x | near_y).any() and 2 <= inside.sum() < len(points):
                return bx0, by0, bx1, by1, {int(r) for r in rows[inside]}
    raise AssertionError("no box with clear edges over the map")
