"""Worklist: many studies at once (files, zip archives, DICOM without extension) → a sortable table, then one study's full view."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from cxr_core.config import DecodeLimits
from cxr_core.imaging import ImageDecodeError, decode_image
from cxr_core.worklist import COLUMNS, WorklistProcessor, expand_uploads, filter_rows, rows_to_csv, sort_rows
from pages.ui.frame import page_frame
from pages.ui.loaders import anomaly_detector, anomaly_detector_entries, ood_guard, predictor
from pages.ui.predict_study import render_study
from pages.ui.widgets import md_filename

page_frame("Worklist", needs_classifier=True)

#: Studies per batch through the networks (see docs/BENCHMARKS.md, "Worklist throughput").
BATCH = 16
HEADERS = dict(COLUMNS)

files = st.file_uploader(
    "Studies: PNG, JPEG, BMP, TIFF or DICOM files (with or without extension) and zip archives of them",
    accept_multiple_files=True, key="worklist_upload",
)
if not files:
    st.caption("Drop many studies at once. Each is classified, scored for anomaly and checked for being a chest "
               "X-ray; click a row to open the study. Everything stays in memory for this session; nothing "
               "uploaded is written to disk or logged.")
    st.stop()


def _detector():
    """The healthy-only detector with the best validation AUROC (one worse than chance is never used)."""
    from cxr_core.anomaly import worse_than_chance

    useful = [e for e in anomaly_detector_entries() if not worse_than_chance(e)]
    if not useful:
        return None
    best = max(useful, key=lambda e: e.detector_card.val_auroc or 0.0)
    return anomaly_detector(best.id)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame([{h: getattr(r, a) for a, h in COLUMNS} for r in rows], columns=[h for _, h in COLUMNS])


COLUMN_CONFIG = {
    "#": st.column_config.NumberColumn(width="small"),
    "P(pneumonia)": st.column_config.NumberColumn(format="%.3f"),
    "3-class probability": st.column_config.NumberColumn(format="%.3f"),
    "Anomaly score": st.column_config.NumberColumn(format="%.4g"),
    "Anomaly flag": st.column_config.CheckboxColumn(),
}

fingerprint = tuple((f.file_id, f.name, f.size) for f in files)
state = st.session_state.get("worklist")
if state is None or state["fingerprint"] != fingerprint:
    items = expand_uploads((f.name, f.getvalue()) for f in files)
    detector = _detector()
    proc = WorklistProcessor(predictor(), detector, ood_guard(), batch_size=BATCH, limits=DecodeLimits())
    bar = st.progress(0.0, text=f"Processing {len(items)} studies…")
    live = st.empty()
    rows = []
    t0 = time.perf_counter()
    for batch in proc.process(items):
        rows.extend(batch)
        bar.progress(len(rows) / len(items), text=f"{len(rows)} of {len(items)} studies processed")
        live.dataframe(_frame(rows), hide_index=True, column_config=COLUMN_CONFIG)
    seconds = time.perf_counter() - t0
    bar.empty()
    live.empty()
    state = {"fingerprint": fingerprint, "items": items, "rows": rows, "seconds": seconds,
             "detector": None if detector is None else detector.name}
    st.session_state["worklist"] = state
    st.session_state.pop("worklist_open", None)

rows, items = state["rows"], state["items"]
n_ok = sum(r.ok for r in rows)
st.caption(f"{len(rows)} studies · {n_ok} processed · {len(rows) - n_ok} could not be read · "
           f"{state['seconds']:.1f} s ({len(rows) / max(state['seconds'], 1e-9):.1f} studies/s) · anomaly score: "
           + (f"{state['detector']}" if state["detector"] else "no usable detector in the registry"))

# --- filter and sort --------------------------------------------------------------------------
f1, f2, f3, f4, f5 = st.columns([1.4, 1.4, 1.4, 1.2, 0.9])
text = f1.text_input("File name contains", key="wl_text")
labels_present = sorted({r.label3 or r.binary_label for r in rows if (r.label3 or r.binary_label)})
labels = f2.multiselect("Label", labels_present, key="wl_labels", placeholder="any")
p_range = f3.slider("P(pneumonia)", 0.0, 1.0, (0.0, 1.0), 0.01, key="wl_p")
sort_col = f4.selectbox("Sort by", [a for a, _ in COLUMNS], format_func=HEADERS.get, key="wl_sort")
desc = f5.toggle("Descending", key="wl_desc")
g1, g2, g3, _ = st.columns([1, 1, 1, 2])
only_flagged = g1.checkbox("Anomaly flagged only", key="wl_flagged")
only_not_cxr = g2.checkbox("Not a chest X-ray only", key="wl_notcxr")
only_failed = g3.checkbox("Unreadable only", key="wl_failed")
shown = filter_rows(rows, text=text, labels=labels or None, p_min=p_range[0], p_max=p_range[1],
                    only_flagged=only_flagged, only_not_cxr=only_not_cxr,
                    statuses={"failed"} if only_failed else None)
shown = sort_rows(shown, sort_col, descending=desc)
df = _frame(shown)
event = st.dataframe(df, hide_index=True, column_config=COLUMN_CONFIG, on_select="rerun",
                     selection_mode="single-row", key="worklist_table", width="stretch")
d1, d2 = st.columns([1, 3])
d1.download_button("Export table (CSV)", data=rows_to_csv(shown), file_name="cxr-lens-worklist.csv",
                   mime="text/csv", on_click="ignore", key="wl_csv")
d2.caption(f"{len(shown)} of {len(rows)} studies shown; the CSV holds the rows shown, in this order. "
           "Click a column header to sort in the table too.")

# --- open one study ---------------------------------------------------------------------------
picked = list(event.selection.rows) if event is not None else []
if picked and picked[0] < len(shown):
    sel = shown[picked[0]].index
    if st.session_state.get("wl_last_sel") != sel:  # a new click in the table opens that study
        st.session_state["wl_last_sel"] = sel
        st.session_state["worklist_open"] = sel
options = [r.index for r in shown]
if st.session_state.get("worklist_open") not in options:
    st.session_state.pop("worklist_open", None)
by_index = {r.index: r for r in rows}
opened = st.selectbox("Open study", options, index=None, key="worklist_open", placeholder="click a row, or pick one",
                      format_func=lambda i: f"#{i} · {by_index[i].file}")
if opened is None:
    st.stop()

row, item = by_index[opened], items[opened - 1]
st.divider()
st.header(f"Study #{row.index}: {md_filename(row.file)}")
if not row.ok:
    st.error(f"**{md_filename(row.file)}** cannot be used: {row.status}")
    st.stop()
try:
    decoded = decode_image(item.data, filename=item.name, limits=DecodeLimits())
except ImageDecodeError as e:
    st.error(f"**{md_filename(row.file)}** cannot be used: {e.message}")
    st.stop()
render_study(item.name, item.data, decoded, key="worklist")
