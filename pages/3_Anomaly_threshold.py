"""Anomaly threshold: choose a healthy-only detector's operating point on its score histograms."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from cxr_core.registry import RegistryError, save_settings
from pages.ui.anomaly_views import FAMILIES, best_by_validation, detector_family, heatmap, map_overlay
from pages.ui.frame import page_frame
from pages.ui.loaders import anomaly_detector, anomaly_detector_entries, anomaly_scores
from pages.ui.threshold_panel import panel_data, threshold_panel

page_frame("Anomaly threshold")
st.caption(
    "Healthy-only detectors were fitted on NORMAL training images only; a higher score means less like "
    "them. An image is flagged when its score is at or above the threshold. Pneumonia is what the "
    "detector should flag; it never saw any."
)

detectors = anomaly_detector_entries()
if not detectors:
    st.warning(
        "No anomaly detector in the registry. Train one with `python -m train.anomaly --data DIR` "
        "or rebuild the demo registry from the home page."
    )
    st.stop()

by_id = {e.id: e for e in detectors}
best = best_by_validation({i: e.detector_card for i, e in by_id.items()})
# Best on validation first (and so the default): the test split never chooses.
order = sorted(by_id, key=lambda i: (i != best, -(by_id[i].detector_card.val_auroc or 0.0)))


def _label(i: str) -> str:
    c = by_id[i].detector_card
    val = "" if c.val_auroc is None else f" · val AUROC {c.val_auroc:.3f}"
    return f"{c.label} · {detector_family(c)}{val}{' · best on validation' if i == best else ''} · {i}"


c1, c2 = st.columns([3, 1])
entry_id = c1.selectbox("Detector", order, format_func=_label, key="anomaly_entry",
                        help="Every healthy-only detector in the registry; the default is the best by validation AUROC.")
entry = by_id[entry_id]
card = entry.detector_card
family = detector_family(card)
st.caption(f"**{family.capitalize()}**: {FAMILIES[family]}.")
try:
    scores = anomaly_scores(entry_id)
except (RegistryError, OSError, KeyError, ValueError) as e:
    st.error(f"The scores of `{entry_id}` cannot be read: {e}")
    st.stop()
splits = [s for s in ("val", "test") if s in scores["tables"]]
split = c2.radio("Split", splits, horizontal=True, key="anomaly_split",
                 format_func=lambda s: {"val": "validation", "test": "test"}[s])
table = scores["tables"][split]
metrics = card.metrics.get(split, {})
hist = card.histograms.get(split)

auroc, aupr = metrics.get("auroc"), metrics.get("aupr")
m1, m2, m3, m4 = st.columns(4)
m1.metric("AUROC", "n/a" if auroc is None else f"{auroc:.3f}")
m2.metric("AUPR", "n/a" if aupr is None else f"{aupr:.3f}",
          None if metrics.get("aupr_chance") is None else f"chance {metrics['aupr_chance']:.3f}", delta_color="off")
m3.metric("Images", f"{table.n_neg} normal · {table.n_pos} pneumonia")
m4.metric("Saved threshold", f"{card.threshold_or(float('nan')):.4g}")
if auroc is not None and auroc < 0.5:
    st.error(f"On this split the detector is **worse than chance** (AUROC {auroc:.3f}): pneumonia scores *lower* "
             "than healthy images. No threshold makes it useful; it is shown so that you can see why.")
elif auroc is not None and auroc < 0.6:
    st.warning(f"AUROC {auroc:.3f}: barely better than chance on this split.")
thr_info = card.thresholds
if thr_info.get("fallback"):
    st.info(f"Threshold fallback: {thr_info.get('note', '')}")
st.caption(f"Score: {card.score or 'n/a'}. Suggestions are computed on the validation split, never on test.")

all_scores = scores["arrays"]["scores"]
suggestions = thr_info.get("suggestions", {})
values = [float(all_scores.min()), float(all_scores.max())] + [float(v["value"]) for v in suggestions.values()]
lo, hi = min(values), max(values)
span = (hi - lo) or 1.0
step = span / 1000
decimals = max(0, min(8, 3 - math.floor(math.log10(span))))
key = f"anomaly_thr::{entry_id}"


def _clamp(v: float) -> float:
    return float(min(max(v, lo), hi))


rev_key = f"{key}::rev"  # bumped whenever the server, not the browser's slider, sets the threshold
panel_key = f"anomaly_panel::{entry_id}::{split}"
if key not in st.session_state:
    st.session_state[key] = _clamp(card.threshold_or(lo))
    st.session_state[rev_key] = 0


def _set_threshold(value: float) -> None:
    st.session_state[key] = _clamp(value)
    st.session_state[rev_key] = st.session_state.get(rev_key, 0) + 1


def _committed() -> None:
    value = (st.session_state.get(panel_key) or {}).get("committed")
    if value is not None and np.isfinite(value):
        st.session_state[key] = _clamp(float(value))


@st.cache_resource(show_spinner=False, max_entries=64)
def _example(root: str, rel: str, entry_id: str, signature: tuple) -> dict:
    """Input (and reconstruction / error map) of one stored-score image, read from the dataset."""
    from cxr_core.data import safe_join
    from cxr_core.imaging import read_gray

    gray = read_gray(safe_join(root, rel))
    det_card = by_id[entry_id].detector_card
    if det_card.has_map:  # the film with its anomaly map
        out = anomaly_detector(entry_id).score(gray)
        return {"input": out.input_u8, "recon": None, "map": out.error_map,
                "overlay": map_overlay(out.input_u8, out.error_map, vmax=det_card.map_scale)}
    if det_card.input is not None and det_card.method != "autoencoder":  # only the input to show: no backbone pass
        from cxr_core.preprocess import prepare

        return {"input": prepare(gray, det_card.input), "recon": None, "map": None}
    out = anomaly_detector(entry_id).score(gray)
    return {"input": out.input_u8, "recon": out.reconstruction, "map": out.error_map}


#: Width of an example thumbnail near the threshold (px).
EXAMPLE_PX = 180


def _examples(threshold: float) -> None:
    arr = scores["arrays"]
    mask = arr["splits"] == split
    idx = np.flatnonzero(mask)
    order = idx[np.argsort(arr["scores"][idx], kind="stable")]
    pos = int(np.searchsorted(arr["scores"][order], threshold, side="left"))
    below, above = order[max(pos - 3, 0) : pos], order[pos : pos + 3]
    root = card.dataset.root
    from pages.ui.loaders import registry_signature

    sig = registry_signature()
    # Thumbnails in a row: the films either side of the threshold (below, then above), side by side.
    for title, rows in (("Just below the threshold (pass)", below[::-1]), ("Just above the threshold (flagged)", above)):
        st.markdown(f"**{title}**")
        if len(rows) == 0:
            st.caption("none")
            continue
        cols = st.columns(3)
        for col, i in zip(cols, rows, strict=False):
            label = "pneumonia" if arr["labels"][i] else "normal"
            caption = f"{arr['paths'][i]} · {label} ({arr['subtypes'][i]}) · score {arr['scores'][i]:.4g}"
            try:
                ex = _example(root, str(arr["paths"][i]), entry_id, sig)
            except Exception as e:  # a moved dataset must not break the page
                col.caption(f"{caption} — image unavailable ({type(e).__name__}: {e})")
                continue
            if ex.get("overlay") is not None:
                col.image([ex["input"], ex["overlay"]], width=EXAMPLE_PX // 2, caption=["input", "anomaly map"],
                          clamp=True)
                col.caption(caption)
            elif ex["map"] is None:
                col.image(ex["input"], caption=caption, width=EXAMPLE_PX, clamp=True)
            else:
                col.image([ex["input"], np.clip(ex["recon"], 0, 1), heatmap(ex["map"])], width=EXAMPLE_PX // 2,
                          caption=["input", "reconstruction", "error map"], clamp=True)
                col.caption(caption)


@st.fragment
def operating_point() -> None:
    if suggestions:
        cols = st.columns(len(suggestions))
        for col, (name, s) in zip(cols, suggestions.items(), strict=True):
            col.button(f"{s['label']}: {s['value']:.4g}", key=f"sugg::{entry_id}::{name}", help=s.get("note"),
                       on_click=_set_threshold, args=(float(s["value"]),), width="stretch")
    threshold = float(st.session_state[key])
    m = table.metrics(threshold)
    threshold_panel(
        panel_data(table, hist, threshold=threshold, lo=lo, hi=hi, step=step, decimals=decimals, auroc=auroc,
                   rev=st.session_state.get(rev_key, 0)),
        key=panel_key, on_commit=_committed,
    )

    saved = entry.detector_card.threshold_or(float("nan"))
    s1, s2 = st.columns([1, 3])
    # The label carries the value the server holds: the panel commits on release, so this is what Save writes.
    if s1.button(f"Save threshold {threshold:.{decimals}f}", type="primary", key=f"save::{entry_id}"):
        try:
            where = save_settings(entry, dict(
                threshold=float(threshold),
                threshold_source={"name": "manual", "split": split, "set_on_page": True,
                                  "at_threshold": {k: m[k] for k in ("sensitivity", "specificity", "precision", "f1")}},
            ))
            s2.success(f"Saved threshold {threshold:.4g} for `{entry_id}` to {where}. "
                       "The Predict page uses it from now on.")
        except (RegistryError, OSError) as e:
            s2.error(f"Could not save the threshold: {e}")
    elif np.isfinite(saved) and not math.isclose(saved, threshold, rel_tol=1e-9, abs_tol=1e-12):
        s2.caption(f"Not saved: the card's threshold is {saved:.4g}.")

    with st.expander("Images just below and above the threshold", expanded=True):
        _examples(threshold)


operating_point()
