"""Embedding-map figures and neighbour panels shared by the Explorer and the Predict page.

Every scatter point carries its global row id in ``customdata`` (one trace per
colour category, so a trace's own point indices are not row ids). Figures are
built from boolean masks over whole arrays: no per-point Python loop, so 100,000
points stay interactive (WebGL traces).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cxr_core.neighbors import Neighbors
from cxr_core.reference import ReferenceSet

#: Colour options of the map: label → function of the reference set giving one category per row.
COLOUR_OPTIONS = ("label", "subtype", "split", "predicted", "correct", "KNN agrees with head")

#: Fixed colours so that a category keeps its colour across views.
PALETTE: dict[str, str] = {
    "NORMAL": "#2a9d8f", "PNEUMONIA": "#e76f51",
    "normal": "#2a9d8f", "bacteria": "#e76f51", "virus": "#8e7dbe",
    "train": "#457b9d", "val": "#f4a261", "test": "#e63946",
    "correct": "#8ab17d", "wrong": "#d62828",
    "KNN agrees": "#8ab17d", "KNN disagrees": "#d62828", "no KNN vote": "#adb5bd",
}
_FALLBACK = ("#264653", "#e9c46a", "#6d597a", "#b56576", "#355070")

#: Above this many points the hover shows the row id only: per-point file names would
#: add megabytes to every rerun of the chart.
HOVER_NAMES_MAX = 20_000


def categories(ref: ReferenceSet, colour: str) -> np.ndarray:
    """One category string per row for the colour option."""
    cls = np.asarray(ref.classes)
    if colour == "label":
        return ref.labels
    if colour == "subtype":
        return ref.subtypes
    if colour == "split":
        return ref.splits
    if colour == "predicted":
        return cls[ref.predicted]
    if colour == "correct":
        return np.where(ref.predicted == ref.targets, "correct", "wrong")
    if colour == "KNN agrees with head":
        return np.where(ref.knn_predicted < 0, "no KNN vote",
                        np.where(ref.knn_predicted == ref.predicted, "KNN agrees", "KNN disagrees"))
    raise ValueError(f"unknown colour option {colour!r}")


def _order(values: np.ndarray) -> list[str]:
    """Categories present, palette order first (a category keeps its legend position across views)."""
    uniq = [str(u) for u in np.unique(values)]
    known = [k for k in PALETTE if k in uniq]
    return known + [u for u in uniq if u not in known]


def scatter_figure(
    ref: ReferenceSet,
    map_name: str,
    colour: str,
    *,
    highlight: list[int] | None = None,
    upload: tuple[str, np.ndarray] | None = None,
    marker_size: float = 4.0,
    height: int = 620,
) -> go.Figure:
    """The map as a WebGL scatter (2-D) or a 3-D scatter, one trace per category."""
    xyz = ref.maps[map_name]
    three = xyz.shape[1] == 3
    traces = _category_traces(ref, xyz, colour, marker_size)
    if highlight:
        h = np.asarray(highlight[:500], dtype=np.int32)
        ring = {"mode": "markers", "name": "selected", "customdata": h, "hoverinfo": "skip",
                "marker": {"size": 14 if not three else 8, "color": "rgba(0,0,0,0)", "line": {"color": "#111", "width": 2}}}
        traces.append(_trace(xyz[h], ring))
    if upload is not None:
        label, pos = upload
        star = {"mode": "markers", "name": f"upload: {label}", "customdata": np.array([-1], dtype=np.int32),
                "hovertemplate": f"uploaded image<br>{label}<extra></extra>",
                "marker": {"size": 18 if not three else 9, "symbol": "star" if not three else "diamond",
                           "color": "#ffd60a", "line": {"color": "#000", "width": 1.5}}}
        traces.append(_trace([[pos[k]] for k in range(xyz.shape[1])], star, columns=True))
    fig = go.Figure(traces)
    fig.update_layout(
        height=height, margin={"l": 0, "r": 0, "t": 10, "b": 0}, legend={"itemsizing": "constant"},
        uirevision=map_name,
    )
    if not three:
        fig.update_xaxes(showticklabels=False, title=None)
        fig.update_yaxes(showticklabels=False, title=None)
    else:
        fig.update_scenes(xaxis_showticklabels=False, yaxis_showticklabels=False, zaxis_showticklabels=False)
    return fig


def _trace(points: Any, style: dict[str, Any], *, columns: bool = False) -> Any:
    """A 3-D scatter of (n, 3) ``points``, else a WebGL 2-D one; ``columns``: given as [xs, ys(, zs)]."""
    cols = list(points) if columns else [points[:, k] for k in range(points.shape[1])]
    if len(cols) == 3:
        return go.Scatter3d(x=cols[0], y=cols[1], z=cols[2], **style)
    return go.Scattergl(x=cols[0], y=cols[1], **style)


def _category_traces(ref: ReferenceSet, xyz: np.ndarray, colour: str, marker_size: float) -> list[Any]:
    """One trace per category, each point carrying its global row id (see :func:`selected_rows`)."""
    three = xyz.shape[1] == 3
    cats = categories(ref, colour)
    ids = np.arange(len(ref), dtype=np.int32)
    names = np.char.rpartition(ref.paths.astype(str), "/")[:, 2] if len(ref) <= HOVER_NAMES_MAX else None
    traces: list[Any] = []
    for i, cat in enumerate(_order(cats)):
        mask = cats == cat
        colour_hex = PALETTE.get(cat, _FALLBACK[i % len(_FALLBACK)])
        common: dict[str, Any] = {
            "mode": "markers",
            "name": f"{cat} ({int(mask.sum()):,})",
            "customdata": ids[mask],
            "marker": {"size": marker_size if not three else max(1.5, marker_size * 0.6), "color": colour_hex, "opacity": 0.8},
        }
        if names is not None:
            common["text"] = names[mask]
            common["hovertemplate"] = "%{text}<br>row %{customdata}<extra>" + cat + "</extra>"
        else:
            common["hovertemplate"] = "row %{customdata}<extra>" + cat + "</extra>"
        traces.append(_trace(xyz[mask], common))
    return traces


def _row_of(customdata: Any) -> int | None:
    """A point's row id from its customdata: a number, a list, or a dict like ``{'0': id}``."""
    cd = customdata
    if isinstance(cd, Mapping):
        cd = cd.get("0", next(iter(cd.values()), None))
    if isinstance(cd, (list, tuple)):
        cd = cd[0] if cd else None
    try:
        return int(cd) if cd is not None else None
    except (TypeError, ValueError):
        return None


def selected_rows(event: Any, n_rows: int) -> list[int]:
    """Row ids of the selected points (the upload marker and out-of-range ids dropped), in selection order."""
    try:
        points = event["selection"]["points"] if event else []
    except (KeyError, TypeError):
        return []
    rows = [_row_of(p.get("customdata")) if isinstance(p, Mapping) else None for p in points or []]
    arr = np.array([r for r in rows if r is not None], dtype=np.int64)
    arr = arr[(arr >= 0) & (arr < n_rows)]
    _, first = np.unique(arr, return_index=True)
    return arr[np.sort(first)].tolist()


def caption(ref: ReferenceSet, row: int, dist: float | None = None) -> str:
    name = str(ref.paths[row]).rsplit("/", 1)[-1]
    sub = str(ref.subtypes[row])
    label = str(ref.labels[row]) + (f"/{sub}" if sub != "normal" else "")
    d = f" · d={dist:.3f}" if dist is not None else ""
    return f"{label} · {ref.splits[row]}{d}\n{name}"


def vote_table(ref: ReferenceSet, nb: Neighbors) -> dict[str, dict[str, float]]:
    """Vote shares per class, majority and distance-weighted."""
    return {
        "majority": dict(zip(ref.classes, ref.knn.shares(nb, "uniform")[0].tolist(), strict=True)),
        "distance-weighted": dict(zip(ref.classes, ref.knn.shares(nb, "distance")[0].tolist(), strict=True)),
    }


def show_votes(ref: ReferenceSet, nb: Neighbors, head_label: str | None = None) -> None:
    """The KNN vote (majority and distance-weighted) beside the classifier head's answer, as one small table."""
    votes = vote_table(ref, nb)
    k = nb.ids.shape[1]
    lines = ["| | answer | vote shares |", "|---|---|---|"]
    winners = {}
    for name, shares in votes.items():
        winner = max(shares, key=lambda c: shares[c])  # ties: first class, as the index's metrics
        winners[name] = winner
        detail = " · ".join(f"{c} {p:.0%}" for c, p in shares.items())
        lines.append(f"| KNN vote, {name} (K={k}) | **{winner}** | {detail} |")
    if head_label:
        agree = "KNN agrees" if head_label == winners["majority"] else "**KNN disagrees**"
        lines.append(f"| Classifier head | **{head_label}** | {agree} |")
    st.markdown("\n".join(lines))
    subs = ref.subtypes[nb.ids[0]]
    uniq, counts = np.unique(subs, return_counts=True)
    st.caption("Neighbours' subtypes: " + ", ".join(f"{c} {u}" for u, c in zip(uniq.tolist(), counts.tolist(), strict=True)))


def show_neighbors(ref: ReferenceSet, nb: Neighbors, width: int = 120) -> None:
    """The neighbours as thumbnails with label, split and distance (one image element)."""
    ids, dist = nb.ids[0], nb.dist[0]
    st.image([np.asarray(ref.thumbs[i]) for i in ids], caption=[caption(ref, int(i), float(d)) for i, d in zip(ids, dist, strict=True)],
             width=width)


def breakdown(ref: ReferenceSet, rows: list[int]) -> dict[str, dict[str, int]]:
    """Counts of the selection by label, subtype, split, head correctness and KNN agreement."""
    r = np.asarray(rows, dtype=np.int64)
    out: dict[str, dict[str, int]] = {}
    for name, values in (("label", ref.labels[r]), ("subtype", ref.subtypes[r]), ("split", ref.splits[r]),
                         ("correct", np.where(ref.predicted[r] == ref.targets[r], "correct", "wrong")),
                         ("KNN vs head", np.where(ref.knn_predicted[r] == ref.predicted[r], "agrees", "disagrees"))):
        u, c = np.unique(values, return_counts=True)
        out[name] = dict(zip(u.tolist(), c.tolist(), strict=True))
    return out
