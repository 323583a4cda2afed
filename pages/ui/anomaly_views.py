"""Plotly figures for anomaly scores: histograms with a threshold line, ROC with the operating point.

The threshold slider redraws these on every move, so each figure is small: bars
binned once (not ``go.Histogram`` over every raw score), a thinned ROC curve, and the
threshold as one layout shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from cxr_core.cards import DetectorCard

NORMAL_COLOUR = "#2b8cbe"
ANOMALY_COLOUR = "#e34a33"
THRESHOLD_COLOUR = "#222222"
MARKER_COLOUR = "#756bb1"


def _figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """A figure from plain dicts without plotly's per-property validation.

    Validation costs tens of milliseconds per figure and the slider redraws two per
    move; the dicts here are fixed by this module, and ``tests/test_anomaly.py`` builds
    each one with validation on, so an invalid property fails a test, not the page.
    """
    # An empty template: plotly's default one is a large dict deep-copied on every build and
    # serialisation, and Streamlit's chart theme restyles the figure in the browser anyway.
    return go.Figure({"data": data, "layout": {"template": {}, **layout}}, _validate=False)


def histogram_figure(
    hist: dict[str, Any],
    threshold: float | None = None,
    *,
    marker: float | None = None,
    marker_label: str = "this image",
    height: int = 300,
) -> go.Figure:
    """Overlaid pre-binned score histograms (normal vs pneumonia) with the threshold as a vertical line."""
    edges = np.asarray(hist["edges"], dtype=float)
    # numpy arrays, not lists: plotly copies and encodes them as one block (lists go element by element).
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    data = []
    for key, name, colour in (("normal", "normal", NORMAL_COLOUR), ("anomalous", "pneumonia", ANOMALY_COLOUR)):
        counts = np.asarray(hist.get(key) or [], dtype=np.int64)
        if counts.sum():
            data.append({"type": "bar", "x": centres, "y": counts, "width": widths, "name": name,
                         "marker": {"color": colour}, "opacity": 0.55})
    shapes, annotations = [], []
    if threshold is not None and np.isfinite(threshold):
        shapes.append({"type": "line", "x0": threshold, "x1": threshold, "y0": 0, "y1": 1, "yref": "paper",
                       "line": {"color": THRESHOLD_COLOUR, "width": 2, "dash": "dash"}})
        annotations.append({"x": threshold, "y": 1, "yref": "paper", "text": "threshold", "showarrow": False,
                            "xanchor": "left", "yanchor": "bottom", "font": {"size": 11}})
    if marker is not None and np.isfinite(marker):
        shapes.append({"type": "line", "x0": marker, "x1": marker, "y0": 0, "y1": 1, "yref": "paper",
                       "line": {"color": MARKER_COLOUR, "width": 3}})
        annotations.append({"x": marker, "y": 0.9, "yref": "paper", "text": marker_label, "showarrow": False,
                            "xanchor": "left", "font": {"size": 11, "color": MARKER_COLOUR}})
    layout = {
        "barmode": "overlay", "height": height, "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "shapes": shapes, "annotations": annotations,
        "xaxis": {"title": {"text": "anomaly score"}}, "yaxis": {"title": {"text": "images"}},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    }
    return _figure(data, layout)


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a ROC curve, both ends kept."""
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, point: tuple[float, float] | None, auroc: float | None,
               height: int = 300, max_points: int = 300) -> go.Figure:
    """ROC curve (thinned to ``max_points``) with the current operating point."""
    fpr, tpr = thin_curve(fpr, tpr, max_points)
    name = "ROC" if auroc is None else f"ROC (AUROC {auroc:.3f})"
    data: list[dict[str, Any]] = [
        {"type": "scatter", "x": fpr, "y": tpr, "mode": "lines", "name": name,
         "line": {"color": ANOMALY_COLOUR}},
        {"type": "scatter", "x": [0, 1], "y": [0, 1], "mode": "lines", "name": "chance",
         "line": {"color": "#999999", "dash": "dot"}},
    ]
    if point is not None and all(np.isfinite(point)):
        data.append({"type": "scatter", "x": [float(point[0])], "y": [float(point[1])], "mode": "markers",
                     "name": "threshold", "marker": {"size": 12, "color": THRESHOLD_COLOUR, "symbol": "x"}})
    layout = {
        "height": height, "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "xaxis": {"title": {"text": "1 − specificity"}, "range": [0, 1]},
        "yaxis": {"title": {"text": "sensitivity"}, "range": [0, 1.02]},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    }
    return _figure(data, layout)


def heatmap(a: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """An error map as an RGB uint8 image (inferno-like ramp), normalised to ``vmax`` (default: its own 99th percentile)."""
    a = np.asarray(a, dtype=np.float32)
    hi = float(vmax) if vmax else (float(np.percentile(a, 99)) or 1.0)
    t = np.clip(a / hi, 0, 1)
    r = np.clip(1.6 * t, 0, 1)
    g = np.clip(1.6 * t - 0.6, 0, 1)
    b = np.clip(0.6 - 1.2 * np.abs(t - 0.35), 0, 1) + np.clip(2.5 * t - 2.0, 0, 1) * 0.8
    return (np.stack([r, g, np.clip(b, 0, 1)], -1) * 255).astype(np.uint8)


#: The three kinds of healthy-only detector, one line each (the threshold page says which one it shows).
FAMILIES: dict[str, str] = {
    "pixel reconstruction": "an autoencoder redraws the film's pixels; the score is how badly it does",
    "feature reconstruction": "a network trained on healthy films redraws frozen ImageNet feature maps from a "
                              "masked or squeezed copy; the score is how badly it does over the lung field, "
                              "and the error per position is a map",
    "feature distance": "distance of pooled ImageNet features to the healthy training films (no reconstruction, "
                        "no map)",
}


def detector_family(card: DetectorCard) -> str:
    """Which of :data:`FAMILIES` a detector card describes."""
    if card.family in FAMILIES:
        return str(card.family)
    return {"autoencoder": "pixel reconstruction", "feature_recon": "feature reconstruction"}.get(card.method, "feature distance")


def best_by_validation(cards: dict[str, DetectorCard]) -> str | None:
    """The id whose card has the highest validation AUROC (None when no card has one)."""
    scored = {k: c.val_auroc for k, c in cards.items()}
    scored = {k: v for k, v in scored.items() if v is not None and np.isfinite(v)}
    return max(scored, key=lambda k: scored[k]) if scored else None


def map_overlay(gray_u8: np.ndarray, error_map: np.ndarray, alpha: float = 0.5, vmax: float | None = None) -> np.ndarray:
    """An error map (same size as the image, or any size: it is resized) over the grey film, RGB uint8.

    ``vmax``: the error drawn at full colour; a detector card's ``map_scale`` (a high quantile of the
    per-position error on healthy validation films) makes maps of different films comparable.
    """
    g = np.asarray(gray_u8, dtype=np.float32)
    e = np.asarray(error_map, dtype=np.float32)
    if e.shape != g.shape:
        from PIL import Image

        e = np.asarray(Image.fromarray(e).resize((g.shape[1], g.shape[0]), Image.BILINEAR))
    heat = heatmap(e, vmax).astype(np.float32)
    base = np.repeat(g[..., None], 3, -1)
    return np.clip((1 - alpha) * base + alpha * heat, 0, 255).astype(np.uint8)

