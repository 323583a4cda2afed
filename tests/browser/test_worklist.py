"""The radiologist's workflow in chromium: drop 50 studies (mixed formats, a corrupt file, a photo), sort by
P(pneumonia), click a row to open a study, compare it with a reference case, export its report and the table."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from bench.browser import StreamlitServer, act, errors_on_screen, mark, open_page, settle
from tests.test_report import pdf_text, phi_dicom
from tests.test_worklist import photo
from tests.upload_corpus import pil_bytes

pytestmark = pytest.mark.browser

N_STUDIES = 50


def _studies(synthetic_data: Path, folder: Path) -> list[Path]:
    """50 files: synthetic phantoms (PNG, some re-saved as JPEG), a DICOM without extension, a corrupt file, a photo."""
    from PIL import Image

    phantoms = sorted(synthetic_data.rglob("*.png"))
    out: list[Path] = []
    for i, src in enumerate(phantoms[: N_STUDIES - 3]):
        if i % 5 == 1:
            dst = folder / f"{i:02d}_{src.stem}.jpg"
            dst.write_bytes(pil_bytes(np.asarray(Image.open(src).convert("L")), "JPEG", quality=92))
        else:
            dst = folder / f"{i:02d}_{src.name}"
            dst.write_bytes(src.read_bytes())
        out.append(dst)
    (folder / "IM000777").write_bytes(phi_dicom())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "holiday.jpg").write_bytes(pil_bytes(photo(), "JPEG", quality=90))
    out += [folder / "IM000777", folder / "corrupt.png", folder / "holiday.jpg"]
    assert len(out) == N_STUDIES, len(out)
    return out


def _choose(page, label: str, option, typed: str = "") -> None:
    """Pick ``option`` (text or pattern) in the selectbox labelled ``label`` and wait for the rerun.

    ``typed``: text typed into the box first, to filter a long (virtualised) list of options.
    """
    page.locator("[data-testid='stSelectbox']").filter(has_text=label).get_by_role("combobox").click()
    if typed:
        page.keyboard.type(typed)
    act(page, lambda: page.get_by_role("option", name=option).click())


def _grid_cell(page, row: int, col_x: float = 12.0) -> tuple[float, float]:
    """Page coordinates of a point in data row ``row`` (0-based) of the worklist table (header 35 px, rows 35 px)."""
    box = page.locator("[data-testid='stDataFrame']").first.bounding_box()
    assert box, "no worklist table"
    return box["x"] + col_x, box["y"] + 35 + 35 * row + 17


def test_worklist_workflow(demo_app: StreamlitServer, page, synthetic_data: Path, tmp_path: Path):
    files = _studies(synthetic_data, tmp_path)
    open_page(page, demo_app.url, "Worklist")
    # The developer toolbar (Deploy button) is hidden for users.
    expect(page.get_by_role("button", name=re.compile("Deploy"))).to_have_count(0)

    act(page, lambda: page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(
        [str(f) for f in files]), timeout_ms=600_000)
    assert not errors_on_screen(page), errors_on_screen(page)
    expect(page.get_by_text(re.compile(rf"{N_STUDIES} studies · {N_STUDIES - 1} processed · 1 could not be read"))) \
        .to_have_count(1)

    # Sort by P(pneumonia), highest first.
    _choose(page, "Sort by", "P(pneumonia)")
    act(page, lambda: page.get_by_text("Descending").click())

    # The exported table is the sorted one, with every study and the reason for the corrupt file.
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export table (CSV)").click()
    table = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8"))))
    assert len(table) == N_STUDIES
    p = [float(r["P(pneumonia)"]) for r in table if r["P(pneumonia)"]]
    assert len(p) == N_STUDIES - 1 and p == sorted(p, reverse=True)
    corrupt = next(r for r in table if r["File"] == "corrupt.png")
    assert corrupt["Status"] != "ok" and corrupt["P(pneumonia)"] == ""
    holiday = next(r for r in table if r["File"] == "holiday.jpg")
    assert holiday["Chest X-ray check"].startswith("NOT a chest X-ray")
    top = table[0]

    # Click the first row of the table: that study opens.
    x, y = _grid_cell(page, 0)
    act(page, lambda: page.mouse.click(x, y))
    expect(page.get_by_role("heading", name=re.compile(rf"Study #{top['#']}:"))).to_have_count(1)
    metrics = page.locator("[data-testid='stMetric']").filter(has_text="Prediction")
    expect(metrics).to_have_count(2)
    assert not errors_on_screen(page), errors_on_screen(page)

    # Compare with the second-nearest reference case, zoomed 2x on both.
    heading = page.get_by_role("heading", name="Compare with a reference case")
    heading.scroll_into_view_if_needed()
    _choose(page, "Reference case", re.compile(r"^2\. "))
    zoom = page.locator("[data-testid='stSlider']").filter(has_text="Zoom (both)").get_by_role("slider")
    zoom.focus()
    since = mark(page)
    for _ in range(4):  # 1.0 → 2.0 in steps of 0.25
        zoom.press("ArrowRight")
    settle(page, since, quiet_ms=1000)
    captions = page.locator("[data-testid='stImageCaption']")
    expect(captions.filter(has_text=re.compile(r"^This study · predicted"))).to_have_count(1)
    expect(captions.filter(has_text=re.compile(r"^Reference 2: labelled \S+ .* d=\d\.\d{3}"))).to_have_count(1)
    for cap in (r"^This study", r"^Reference 2"):
        img = page.locator("[data-testid='stImageContainer']").filter(
            has=captions.filter(has_text=re.compile(cap))).locator("img")
        img.scroll_into_view_if_needed()
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
    shown_zoom = page.locator("[data-testid='stSlider']").filter(has_text="Zoom (both)").locator(
        "[data-testid='stSliderThumbValue']").inner_text()
    assert float(shown_zoom) == 2.0, shown_zoom

    # Export the study's report and read it back.
    button = page.get_by_role("button", name=re.compile("Export study report"))
    button.scroll_into_view_if_needed()
    with page.expect_download(timeout=180_000) as dl:
        button.click()
    data = Path(dl.value.path()).read_bytes()
    text, pages, images = pdf_text(data)
    flat = " ".join(text.split())
    assert data.startswith(b"%PDF-") and pages >= 1
    assert f"Study: {top['File']}" in flat
    assert "Research use, not a medical device." in flat
    assert "operating threshold on P(pneumonia)" in flat
    assert re.search(r"score \S+ (>=|<) threshold \S+", flat), flat[:2000]
    neighbours = re.findall(r"\d\. \S+, d=\d\.\d{3}", flat)
    assert len(neighbours) == 7, neighbours
    assert len(re.findall(r"card sha256 [0-9a-f]{64}", flat)) >= 2
    assert re.search(r"Date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", flat)
    assert images >= 2 + 7

    # The photo: the chest X-ray check stands above its greyed predictions.
    _choose(page, "Open study", re.compile(r"holiday\.jpg"), typed="holiday")
    warning = page.locator("[data-testid='stAlert']").filter(has_text="does not look like a pediatric chest X-ray")
    expect(warning).to_have_count(1)
    first_metric = page.locator("[data-testid='stMetric']").first
    assert warning.bounding_box()["y"] < first_metric.bounding_box()["y"]
    greyed = page.locator(".st-key-predictions_flagged")
    expect(greyed).to_have_count(1)
    assert float(greyed.evaluate("el => getComputedStyle(el).opacity")) < 0.6
    assert not errors_on_screen(page), errors_on_screen(page)
