"""Models & data: model cards, metrics, confusion matrices, ROC and training curves, and the training data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cxr_core.calibration import reliability_by_split
from cxr_core.cards import OPERATING_POINT_LABELS, ClassifierCard, MetricKey
from cxr_core.config import ordered_tasks
from pages.ui.frame import page_frame
from pages.ui.loaders import dataset_image_sizes, entries, reference_set, registry_path

page_frame("Models & data")

statuses = entries()
# The classifiers the app predicts with come first (binary, 3-class, then other tasks), then detectors.
_TASKS = ordered_tasks(str(s.info.task) for s in statuses if s.info and s.info.kind == "classifier")
usable = sorted((s for s in statuses if s.info),
                key=lambda s: (_TASKS.index(s.info.task) if s.info.kind == "classifier" else len(_TASKS), s.id))
broken = [s for s in statuses if not s.ok]

if broken:
    with st.expander(f"⚠️ {len(broken)} broken entr{'y' if len(broken) == 1 else 'ies'} (not used by the app)", expanded=not usable):
        for s in broken:
            st.error(f"`{s.id}`: {s.reason}")
if not usable:
    st.warning(f"No usable entries in the registry at `{registry_path()}`. Build the demo registry from the home page, "
               "or train one with `python -m train.classifier`.")
    st.stop()


def _label(s) -> str:
    c = s.info
    tag = " · synthetic" if c.synthetic else ""
    return f"{c.kind} · {c.task or '—'} · {c.architecture or ''} · {s.id}{tag}"


def _thresholds_text(thresholds) -> str:
    """Classifier cards hold {name: cut}; detector cards hold {"suggestions": {name: {"value": ...}}} and notes."""
    if not isinstance(thresholds, dict) or not thresholds:
        return "—"
    flat = thresholds.get("suggestions") if isinstance(thresholds.get("suggestions"), dict) else thresholds
    parts = []
    for k, v in flat.items():
        v = v.get("value") if isinstance(v, dict) else v
        parts.append(f"{k} {v:.3f}" if isinstance(v, int | float) else f"{k} {v}")
    return ", ".join(parts)


by_label = {_label(s): s for s in usable}
choice = st.selectbox("Entry", list(by_label), key="entry")
card = by_label[choice].info
kind, task = card.kind, card.task
classes = list(card.classes)
train = card.training
ds = card.dataset
inp = card.input

# --- the card, readable ------------------------------------------------------------------------------
st.header("Model card")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Kind / task", f"{kind} / {task or '—'}")
c2.metric("Architecture", str(card.architecture or "—"))
c3.metric("Input", inp.describe() if inp else "?")
c4.metric("Trained on", "synthetic phantoms" if card.synthetic else ds.name or "—")
facts = {
    "classes": ", ".join(classes) or "—",
    "pretrained weights": card.pretrained_source or ("none (random init)" if card.pretrained is False else "—"),
    "frozen stages": train.get("frozen_stages") or 0,
    "device": train.get("device", "—"),
    "world size": train.get("world_size", 1),
    "seconds (total / training)": f"{train.get('seconds_total', 0):.0f} / {train.get('seconds_train', 0):.0f}" if train else "—",
    "epochs run (selected on validation)": f"{train.get('epochs_run', '—')} ({train.get('best_epoch', '—')})",
    "training images/s": f"{train.get('images_per_second', 0):.1f}" if train else "—",
    "threshold in use": "—" if card.threshold is None else card.threshold,
    "thresholds chosen on validation": _thresholds_text(dict(card.thresholds)),
    "input mean / std": f"{list(inp.mean)} / {list(inp.std)}" if inp else "—",
    "crop fraction": inp.crop_fraction if inp else "—",
    "created": card.created_at or "—",
    "code version": card.code_version or "—",
    "entry id": card.id,
}
st.table(pd.DataFrame({"": [str(v) for v in facts.values()]}, index=list(facts)))
if train.get("args"):
    with st.expander("Training arguments"):
        st.json(train["args"], expanded=True)
with st.expander("Raw card (JSON)"):
    st.code(json.dumps(card.raw, indent=2), language="json")

# --- metrics -----------------------------------------------------------------------------------------
def metric_frame(metrics: Mapping[MetricKey, Mapping], task: str | None) -> pd.DataFrame:
    rows = []
    for mk, m in metrics.items():
        if mk.knn:
            continue
        row = {
            "source": "train.evaluate" if mk.source == "evaluate" else "training",
            "split": mk.split,
            "views": f"TTA×{mk.tta}" if mk.tta > 1 else "plain",
            "threshold": OPERATING_POINT_LABELS.get(mk.threshold or ("default" if task == "binary" else "argmax"), mk.threshold),
            "n": m.get("n"),
            "accuracy": m.get("accuracy"),
        }
        if task == "binary":
            row.update({k: m.get(k) for k in ("sensitivity", "specificity", "precision", "f1", "auroc", "ece")})
            row["cut"] = m.get("threshold")
        else:
            ab = m.get("as_binary") or {}
            row.update({"precision (macro)": m.get("precision_macro"), "recall (macro)": m.get("recall_macro"),
                        "F1 (macro)": m.get("f1_macro"), "AUROC (OvR)": m.get("auroc_ovr"), "ece": m.get("ece"),
                        "pneumonia sens": ab.get("sensitivity"), "pneumonia spec": ab.get("specificity")})
            for c, v in (m.get("per_class_accuracy") or {}).items():
                row[f"acc {c}"] = v
        row["key"] = str(mk)
        rows.append(row)
    return pd.DataFrame(rows)


metrics = card.metrics
by_key = {str(k): v for k, v in metrics.items()}
if kind == "classifier" and metrics:
    st.header("Metrics")
    frame = metric_frame(metrics, task)
    if frame.empty:
        st.info("This card has no metrics in the usual form.")
    else:
        for split in [s for s in ("test", "val") if s in set(frame["split"])] + sorted(set(frame["split"]) - {"test", "val"}):
            st.subheader(f"{split} split")
            part = frame[frame["split"] == split].drop(columns=["split"]).set_index(["source", "views", "threshold"])
            st.dataframe(part, width="stretch")
        st.caption("Thresholds marked *(val)* were chosen on the patient-level validation split, never on test.")

        st.subheader("Confusion matrix")
        keys = [k for k in frame["key"] if isinstance(by_key[k].get("confusion"), list)]
        if keys:
            default = keys.index("test") if "test" in keys else 0
            key = st.selectbox("Metrics set", keys, index=default, key="cm_key")
            cm = by_key[key]["confusion"]
            names = classes if len(cm) == len(classes) else [str(i) for i in range(len(cm))]
            fig = px.imshow(cm, x=names, y=names, text_auto=True, color_continuous_scale="Blues",
                            labels={"x": "predicted", "y": "true", "color": "images"}, aspect="equal")
            fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title=key)
            st.plotly_chart(fig, width="stretch", key="cm_fig")
elif kind == "classifier":
    st.info("This classifier's card has no metrics.")
else:
    with st.expander("Metrics (raw)", expanded=bool(metrics)):
        st.json(dict(metrics))

# --- curves ------------------------------------------------------------------------------------------
curves = card.curves if isinstance(card, ClassifierCard) else {}
if curves:
    st.header("ROC curves")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for split, c in curves.items():
        per_class = {"": c} if isinstance(c, dict) and "fpr" in c else (c if isinstance(c, dict) else {})
        for cls, pts in per_class.items():
            if not isinstance(pts, dict) or "fpr" not in pts:
                continue
            fig.add_trace(go.Scatter(x=pts["fpr"], y=pts["tpr"], mode="lines", name=f"{split} {cls}".strip()))
    fig.update_layout(xaxis_title="1 − specificity (false-positive rate)", yaxis_title="sensitivity (true-positive rate)",
                      height=420, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    st.plotly_chart(fig, width="stretch", key="roc_fig")

def reliability_figure(diagrams: dict) -> go.Figure:
    """Accuracy against confidence per bin, raw and temperature-scaled, per split (the card's ``reliability``)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"))
    for split, d in diagrams.items():
        for kind, dash in (("raw", "dot"), ("calibrated", "solid")):
            pts = d.get(kind) or {}
            xs = [c for c, n in zip(pts.get("confidence", []), pts.get("count", []), strict=False) if n]
            ys = [a for a, n in zip(pts.get("accuracy", []), pts.get("count", []), strict=False) if n]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"dash": dash}, name=f"{split} {kind}"))
    fig.update_layout(xaxis_title="confidence (top class)", yaxis_title="accuracy", height=380,
                      margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis_range=[0, 1], yaxis_range=[0, 1])
    return fig


calibration = card.calibration if isinstance(card, ClassifierCard) else {}
diagrams = calibration.get("reliability")
if not diagrams and kind == "classifier" and calibration and (ref := reference_set(by_label[choice].id)) is not None:
    diagrams = reliability_by_split(ref.probs, ref.targets, ref.splits, str(task), float(calibration.get("temperature", 1.0)))
if diagrams:
    st.header("Calibration")
    test = by_key.get("test") or {}
    st.caption(
        f"Temperature scaling fitted on validation: T = {calibration.get('temperature', 1.0):.3f} "
        f"(the app shows softmax(logits / T); decisions do not change). Test ECE "
        f"{test.get('ece', float('nan')):.3f} raw → {test.get('ece_calibrated', float('nan')):.3f} calibrated."
    )
    st.plotly_chart(reliability_figure(diagrams), width="stretch", key="reliability_fig")
    if not calibration.get("reliability"):
        st.caption("Drawn from the embedding index's stored probabilities (this card predates stored diagrams).")

history = train.get("history") or []
if history:
    st.header("Training curves")
    hist = pd.DataFrame(history)
    cols = st.columns(2)
    loss_cols = [c for c in ("train_loss",) if c in hist]
    val_cols = [c for c in ("val_accuracy", "val_auroc", "val_score") if c in hist]
    if loss_cols:
        fig = px.line(hist, x="epoch", y=loss_cols, markers=True, title="training loss")
        if train.get("best_epoch"):
            fig.add_vline(x=train["best_epoch"], line_dash="dot", annotation_text="selected")
        cols[0].plotly_chart(fig, width="stretch", key="loss_fig")
    if val_cols:
        fig = px.line(hist, x="epoch", y=val_cols, markers=True, title="validation")
        if train.get("best_epoch"):
            fig.add_vline(x=train["best_epoch"], line_dash="dot", annotation_text="selected")
        cols[1].plotly_chart(fig, width="stretch", key="val_fig")

# --- the data it was trained on ----------------------------------------------------------------------
st.header("Training data")
counts = ds.counts
if counts:
    rows = [{"split": sp, "class": cl, "images": n} for sp, per in counts.items() for cl, n in per.items()]
    cdf = pd.DataFrame(rows)
    left, right = st.columns([2, 1])
    fig = px.bar(cdf, x="split", y="images", color="class", barmode="group", text_auto=True,
                 category_orders={"split": [s for s in ("train", "val", "test") if s in counts]})
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    left.plotly_chart(fig, width="stretch", key="counts_fig")
    right.dataframe(cdf.pivot_table(index="class", columns="split", values="images", aggfunc="sum", fill_value=0), width="stretch")
    st.caption(f"Per split after the patient-level validation split ({ds.val_fraction} of train "
               f"patients, seed {ds.val_seed}). Used in training: {dict(ds.used)}.")
else:
    st.info("The card records no class counts.")

root = ds.root
if root and Path(root).is_dir():
    try:
        sizes = dataset_image_sizes(root, ds.fingerprint)
    except Exception as e:  # a folder that stopped being a dataset: say so, keep the page
        st.error(f"Cannot read the image sizes of `{root}`: {e}")
    else:
        n = len(sizes["width"])
        if n:
            sdf = pd.DataFrame({"width": sizes["width"], "height": sizes["height"], "split": sizes["split"]})
            sdf["long side"] = sdf[["width", "height"]].max(axis=1)
            left, right = st.columns(2)
            fig = px.histogram(sdf, x="long side", color="split", nbins=40, barmode="overlay",
                               title=f"longest side of {n} images (px)")
            left.plotly_chart(fig, width="stretch", key="size_hist")
            fig = px.histogram(sdf.assign(aspect=sdf["width"] / sdf["height"]), x="aspect", color="split", nbins=40,
                               barmode="overlay", title="aspect ratio (width / height)")
            right.plotly_chart(fig, width="stretch", key="aspect_hist")
            st.caption(f"Sizes from file headers of `{root}` (no pixels decoded)"
                       + (f"; {sizes['unreadable']} files had unreadable headers." if sizes["unreadable"] else "."))
        else:
            st.warning(f"No readable image headers in `{root}`.")
elif root:
    st.info(f"The dataset folder `{root}` is not on this machine, so the image-size histogram cannot be drawn. "
            "The class counts above come from the card.")
