"""Screenshots of every page for the README, in chromium: the release registry or a synthetic demo one.

    python -m bench.screenshots --registry release/kermany-224   # the README's pictures (real films)
    python -m bench.screenshots --registry /tmp/demo --out docs/screenshots/demo

Only two kinds of registry are accepted: the committed release (its films are kermany-224's, CC BY
4.0, redistributed with the attribution the README puts under the pictures; the Predict page shows
an official-test film of kermany-224 uploaded) and a registry trained on synthetic phantoms only
(the Predict page shows a phantom). Anything else is refused, so no other real chest X-ray can end
up in ``docs/``. The explorer is shown with one point clicked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.browser import (
    CHART,
    REPO,
    VIEWPORT,
    StreamlitServer,
    act,
    chromium,
    chromium_missing_reason,
    errors_on_screen,
    isolated_point,
    map_points,
    new_context,
    open_page,
    page_files,
    upload,
    url_path,
    wait_for_app_run,
)

OUT = REPO / "docs" / "screenshots"
#: Tallest screenshot (px); longer pages are cut at the bottom.
MAX_HEIGHT = 4000


def non_synthetic_entries(registry: Path) -> list[str]:
    """Ids of entries whose card does not say synthetic demo data (these must never be screenshotted)."""
    from cxr_core.registry import list_entries

    bad = []
    for s in list_entries(str(registry), check_hashes=False):
        if not (s.info and s.info.synthetic):
            bad.append(s.id)
    return bad


def release_licence(registry: Path) -> str | None:
    """The data licence a release registry's manifest states, or None when ``registry`` is no release."""
    from cxr_core.registry import read_release_manifest

    return read_release_manifest(registry).get("dataset", {}).get("licence")


def release_film(data: Path = REPO.parent / "shared" / "data" / "kermany-224") -> Path:
    """An official-test bacterial pneumonia film of kermany-224 (CC BY 4.0) for the release's Predict picture."""
    found = sorted((data / "test" / "PNEUMONIA").glob("*bacteria*"))
    if not found:
        raise SystemExit(f"no kermany-224 test film under {data}")
    return found[0]


def upload_example(page: Any, registry: Path) -> None:
    upload(page, release_film() if release_licence(registry) else phantom(registry))


def phantom(registry: Path) -> Path:
    """A synthetic bacterial-pneumonia phantom from the demo set (the upload shown on the Predict page)."""
    data = registry / "_synthetic"
    for pattern in ("test/PNEUMONIA/*bacteria*", "test/PNEUMONIA/*", "*/*/*"):
        found = sorted(data.glob(pattern))
        if found:
            return found[0]
    raise SystemExit(f"no synthetic images under {data}")


def _settle(page: Any) -> None:
    wait_for_app_run(page)
    # A page still drawing shows grey skeletons; a picture of those is not the page.
    page.wait_for_function("!document.querySelector(\"[data-testid='stSkeleton']\")", timeout=180_000)
    wait_for_app_run(page)
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=60_000)
    page.wait_for_timeout(800)  # plotly draws after the run ends


def _click_a_point(page: Any) -> None:
    """Click an isolated point of the explorer's map so that the page shows an image and its neighbours."""
    page.locator(f"{CHART} .js-plotly-plot").first.wait_for(timeout=60_000)
    points, plot = map_points(page)
    x, y, _ = isolated_point(points, plot, min_gap=6.0)
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    act(page, lambda: page.mouse.click(x, y))
    page.mouse.move(5, 5)  # no hover label over the picture
    _settle(page)


def _shrink(png: Path) -> None:
    """256-colour palette PNG: about a third of the size, no visible loss on these flat UI pictures."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def _settle_layout(page: Any) -> None:
    page.wait_for_timeout(1500)  # plotly redraws on resize
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=60_000)


ACTIONS: dict[str, Callable[[Any, Path], None]] = {
    "Predict": upload_example,
    "Embedding_explorer": lambda page, reg: _click_a_point(page),
}


def take(registry: Path, out: Path, log: Callable[[str], None] = print, pages: list[str] | None = None) -> list[Path]:
    bad = [] if release_licence(registry) == "CC BY 4.0" else non_synthetic_entries(registry)
    if bad:
        raise SystemExit(f"refusing: {registry} holds entries not trained on synthetic data: {bad}")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []
    # The toolbar's Deploy button is developer chrome, not the product.
    with StreamlitServer(registry, env={"STREAMLIT_CLIENT_TOOLBAR_MODE": "minimal"}) as srv, chromium() as browser:
        for path in [p for p in [""] + [url_path(p) for p in page_files()] if pages is None or p in pages]:
            ctx = new_context(browser, 180_000, device_scale_factor=1)
            page = ctx.new_page()
            open_page(page, srv.url, path)
            if path in ACTIONS:
                ACTIONS[path](page, registry)
            _settle(page)
            errors = errors_on_screen(page)
            name = (path or "home").lower()
            if errors:
                # A picture of an error is not documentation: leave the old file, report, fail at the end.
                log(f"NOT written: /{path} shows an error: {errors[0][:200]}")
                failed.append(name)
                ctx.close()
                continue
            target = out / f"{name}.png"
            # The page scrolls inside stMain, not the document: grow the viewport to the content instead.
            height = int(page.evaluate(
                "() => { const m = document.querySelector(\"[data-testid='stMain']\"); return m ? m.scrollHeight : 1000; }"))
            page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height, VIEWPORT["height"]), MAX_HEIGHT)})
            _settle_layout(page)
            page.screenshot(path=str(target))
            _shrink(target)
            written.append(target)
            log(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
            ctx.close()
    if failed:
        raise SystemExit(f"pages showing an error, not screenshotted: {', '.join(failed)}")
    return written


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default=os.environ.get("CXR_REGISTRY", str(REPO / "registry")))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--no-build", action="store_true", help="fail instead of building the demo registry when empty")
    p.add_argument("--pages", default="", help="comma-separated page paths to retake (default: every page)")
    ns = p.parse_args(argv)
    reason = chromium_missing_reason()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    registry = Path(ns.registry).resolve()
    from cxr_core.demo import build_demo, has_usable_classifier

    if not (registry.is_dir() and has_usable_classifier(registry)):
        if ns.no_build:
            print(f"{registry} has no classifier", file=sys.stderr)
            return 2
        build_demo(registry)
    take(registry, Path(ns.out), pages=[p for p in ns.pages.split(",") if p] or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
