"""A one-page study report (PDF, fpdf2): image, class activation map, predictions, anomaly, neighbours, models.

:class:`StudyReport` holds what the report says; :func:`report_pdf` lays it out on an A4 page and
returns the bytes (built in memory, never written to disk). :func:`report_lines` is the text of
the report, line by line, the same strings the PDF prints (tests parse the PDF and compare).

A report carries no patient-identifying field: it is built from decoded pixels, model outputs and
registry cards only; the DICOM header never reaches this module (``cxr_core.dicom_view`` keeps an
allow-list of technical attributes, and only :class:`TechnicalHeader` rows may be passed in).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DISCLAIMER",
    "ReportAnomaly",
    "ReportModel",
    "ReportNeighbor",
    "ReportPrediction",
    "StudyReport",
    "card_hashes",
    "nearest_references",
    "report_lines",
    "report_pdf",
]

DISCLAIMER = "Research use, not a medical device."
#: Neighbours shown in a report.
N_NEIGHBORS = 7


@dataclass
class ReportPrediction:
    """One classifier's answer: label, probability per class, and the operating threshold (binary)."""

    title: str
    label: str
    probs: dict[str, float]
    entry_id: str
    threshold: float | None = None


@dataclass
class ReportAnomaly:
    """One healthy-only detector's score against its saved threshold."""

    name: str
    score: float
    threshold: float
    flagged: bool
    entry_id: str


@dataclass
class ReportNeighbor:
    """A reference image near the study: thumbnail, label and cosine distance."""

    thumb: np.ndarray
    label: str
    distance: float
    split: str = ""


@dataclass
class ReportModel:
    """A registry entry the report used, identified by the hashes of its card and weights."""

    entry_id: str
    role: str
    card_sha256: str
    weights_sha256: str | None = None


@dataclass
class StudyReport:
    """Everything one report prints."""

    study: str
    image: np.ndarray  # (H, W) uint8, as displayed
    predictions: list[ReportPrediction]
    models: list[ReportModel]
    image_format: str = ""
    cam: np.ndarray | None = None  # (H, W, 3) uint8 overlay
    cam_caption: str = ""
    guard: str = ""
    guard_ok: bool | None = None
    anomalies: list[ReportAnomaly] = field(default_factory=list)
    neighbors: list[ReportNeighbor] = field(default_factory=list)
    neighbors_note: str = ""
    technical: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def card_hashes(entry: Any) -> tuple[str, str | None]:
    """(sha256 of the entry's card.json bytes, sha256 of its weights from the card) for a registry ``Entry``."""
    path = Path(entry.path) / "card.json"
    try:
        card_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # a card held in memory only (tests, overlays): hash its canonical JSON
        card_hash = hashlib.sha256(json.dumps(entry.card, sort_keys=True, default=str).encode()).hexdigest()
    return card_hash, entry.info.file_sha256("weights.safetensors")


def nearest_references(knn: Any, embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(rows, distances) of the ``k`` nearest reference images, leaving out the study itself when it
    is a reference (distance ~0), and that row (or None). ``knn``: a ``neighbors.KnnIndex``."""
    nb, _, self_row = knn.query_upload(embedding, k)
    return nb.ids[0], nb.dist[0], self_row


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def report_lines(report: StudyReport) -> dict[str, list[str]]:
    """The report's text by section, exactly as printed."""
    head = [
        f"Study: {report.study}" + (f" ({report.image_format})" if report.image_format else ""),
        f"Image: {report.image.shape[1]} x {report.image.shape[0]} px",
        f"Date: {report.created.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        DISCLAIMER,
    ]
    guard = []
    if report.guard:
        guard.append(("Chest X-ray check: " if report.guard_ok is not False else "WARNING - chest X-ray check: ")
                     + report.guard)
        if report.guard_ok is False:
            guard.append("The predictions below assume a pediatric chest X-ray and are not meaningful for this image.")
    preds = []
    for p in report.predictions:
        probs = ", ".join(f"{c} {_pct(v)}" for c, v in p.probs.items())
        thr = f"; operating threshold on P(pneumonia) {p.threshold:.2f}" if p.threshold is not None else ""
        preds.append(f"{p.title}: {p.label} ({probs}){thr}")
    anomaly = [
        f"{a.name}: score {a.score:.4g} {'>=' if a.flagged else '<'} threshold {a.threshold:.4g} "
        f"({'FLAGGED as unlike the healthy training images' if a.flagged else 'within the healthy range'})"
        for a in report.anomalies
    ] or ["No healthy-only anomaly detector scored this study."]
    neigh = [f"{i + 1}. {n.label}, d={n.distance:.3f}" + (f" ({n.split})" if n.split else "")
             for i, n in enumerate(report.neighbors)] or ["No reference index: no neighbours."]
    if report.neighbors_note:
        neigh.append(report.neighbors_note)
    models = [f"{m.entry_id} ({m.role}): card sha256 {m.card_sha256}"
              + (f"; weights sha256 {m.weights_sha256}" if m.weights_sha256 else "") for m in report.models]
    tech = [f"{k}: {v}" for k, v in report.technical]
    return {"head": head, "guard": guard, "predictions": preds, "anomaly": anomaly, "neighbors": neigh,
            "models": models, "technical": tech, "notes": list(report.notes)}


_REPLACE = {"\u2014": "-", "\u2013": "-", "\u2265": ">=", "\u2264": "<=", "\u2026": "...", "\u2019": "'",
            "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2212": "-"}


def _latin1(text: str) -> str:
    """The PDF core fonts speak Latin-1: common typography mapped, anything else becomes '?'."""
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


def _pil(arr: np.ndarray, max_side: int = 1024) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(arr))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


_INK, _WARN, _ACCENT = (27, 38, 49), (160, 30, 30), (31, 111, 139)


class _Page:
    """An A4 document with the report's typography: body text, section headings, pictures."""

    def __init__(self, report: StudyReport) -> None:
        from fpdf import FPDF

        pdf = FPDF(orientation="P", unit="mm", format="A4")
        pdf.set_auto_page_break(auto=True, margin=12)
        pdf.set_creator("CXR Lens")
        pdf.set_title(_latin1(f"CXR Lens study report - {report.study}"))
        pdf.set_creation_date(report.created)
        pdf.add_page()
        self.pdf = pdf
        self.width = pdf.w - pdf.l_margin - pdf.r_margin

    def text(self, s: str, size: float = 9, style: str = "", color: tuple[int, int, int] = _INK) -> None:
        self.pdf.set_font("Helvetica", style, size)
        self.pdf.set_text_color(*color)
        self.pdf.multi_cell(self.width, size * 0.45, _latin1(s), new_x="LMARGIN", new_y="NEXT")

    def heading(self, s: str) -> None:
        self.pdf.ln(1.5)
        self.text(s, 11, "B", _ACCENT)

    def section(self, title: str, lines: list[str], size: float = 9) -> None:
        self.heading(title)
        for s in lines:
            self.text(s, size)


def report_pdf(report: StudyReport) -> bytes:
    """The report as a one-page A4 PDF (a second page only when the text does not fit)."""
    lines = report_lines(report)
    page = _Page(report)
    page.text("CXR Lens - study report", 15, "B")
    for s in lines["head"][:-1]:
        page.text(s)
    page.text(lines["head"][-1], 10, "B", _WARN)
    for s in report.notes:
        page.text(s, 8, "I")
    if lines["guard"]:
        page.heading("Chest X-ray check")
        for s in lines["guard"]:
            page.text(s, 9, "B" if report.guard_ok is False else "", _WARN if report.guard_ok is False else _INK)
    _image_and_map(page, report)
    page.section("Predictions", lines["predictions"])
    page.section("Anomaly score", lines["anomaly"])
    page.heading(f"{len(report.neighbors) or 'No'} nearest reference images")
    if report.neighbors:
        _neighbor_thumbs(page, report.neighbors)
    for s in lines["neighbors"]:
        page.text(s, 8)
    page.section("Models", lines["models"], 7)
    if lines["technical"]:
        page.heading("Technical header (DICOM, no patient data)")
        page.text("; ".join(lines["technical"]), 7.5)
    page.pdf.ln(2)
    page.text(DISCLAIMER + " Generated by CXR Lens; not a diagnosis.", 8, "B", _WARN)
    return bytes(page.pdf.output())


def _image_and_map(page: _Page, report: StudyReport) -> None:
    """The image and its class activation map side by side, at the same height, with a caption."""
    pdf = page.pdf
    pdf.ln(2)
    y = pdf.get_y()
    side = (page.width - 4) / 2
    img = _pil(report.image)
    h_img = min(side * img.height / img.width, 80)
    w_img = h_img * img.width / img.height
    pdf.image(img, x=pdf.l_margin, y=y, w=w_img, h=h_img)
    if report.cam is not None:
        cam = _pil(report.cam)
        pdf.image(cam, x=pdf.l_margin + side + 4, y=y, w=h_img * cam.width / cam.height, h=h_img)
    pdf.set_y(y + h_img + 1)
    page.text("Left: the image as displayed. Right: " + (report.cam_caption or "no class activation map."), 7.5, "I")


def _neighbor_thumbs(page: _Page, neighbors: list[ReportNeighbor]) -> None:
    """One row of thumbnails; on a new page when the row would not fit on this one."""
    pdf = page.pdf
    y = pdf.get_y()
    if y + 35 > pdf.h - pdf.b_margin:
        pdf.add_page()
        y = pdf.get_y()
    cell = page.width / max(len(neighbors), N_NEIGHBORS)
    for i, nb in enumerate(neighbors):
        th = _pil(nb.thumb, 256)
        tw = min(cell - 2, 24)
        pdf.image(th, x=pdf.l_margin + i * cell, y=y, w=tw, h=tw * th.height / th.width)
    pdf.set_y(y + min(cell - 2, 24) + 1)
