"""Predict-page section: one click exports the study report (PDF): image, map, predictions, anomaly,
the seven nearest references, the model entries with their card hashes, the date, and the disclaimer."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cxr_core.config import task_title
from cxr_core.imaging import DecodedImage
from cxr_core.report import (
    N_NEIGHBORS,
    ReportAnomaly,
    ReportModel,
    ReportNeighbor,
    ReportPrediction,
    StudyReport,
    card_hashes,
    nearest_references,
    report_pdf,
)

from .loaders import (
    anomaly_detector,
    anomaly_detector_entries,
    entries,
    explainer,
    ood_guard,
    reference_set,
)
from .widgets import clean_filename


def _entry(entry_id: str) -> Any:
    return next((s.entry() for s in entries() if s.id == entry_id and s.ok), None)


def _model(entry: Any, role: str) -> ReportModel:
    card_sha, weights_sha = card_hashes(entry)
    return ReportModel(entry.id, role, card_sha, weights_sha)


def study_cam(decoded: DecodedImage, prediction: Any) -> tuple[np.ndarray | None, str]:
    """Overlay and caption of the default map (HiResCAM) for the predicted class, 3-class model first."""
    from cxr_core.explain.methods import DEFAULT_METHOD, METHOD_LABELS
    from cxr_core.explain.overlay import overlay

    # A multi-class model's map is the better "where" (docs/GRADCAM.md); the binary one only when it is alone.
    task = next((t for t in prediction.results if t != "binary"), "binary")
    res = prediction.results.get(task)
    if res is None:
        return None, ""
    ex = explainer(res.entry_id, None, DEFAULT_METHOD)
    feats = prediction.feature_maps.get(task, {}).get(ex.kept_layer) if ex.kept_layer else None
    exp = (ex.explain_features(decoded.array, feats, method=DEFAULT_METHOD, target=res.label) if feats is not None
           else ex.explain(decoded.array, method=DEFAULT_METHOD, target=res.label))
    caption = f"{METHOD_LABELS[DEFAULT_METHOD]} for {res.label} ({task_title(task, list(res.classes))} model, layer {exp.layer})."
    return overlay(decoded.array, exp.cam, 0.4, "jet"), caption


def study_report(decoded: DecodedImage, prediction: Any) -> StudyReport:
    """Everything the report prints for this study, from the registry's cached objects."""
    extras = prediction.extras
    models: list[ReportModel] = []  # every entry that contributed, in the order of the sections
    preds = _predictions(prediction, models)
    anomalies = _anomalies(decoded, models)
    guard_text, guard_ok = _guard(extras.get("ood"), models)
    neighbors, note = _neighbors(prediction)
    cam, cam_caption = study_cam(decoded, prediction)
    technical = list(extras.get("technical") or [])
    notes = []
    if any(s.info and s.info.synthetic for s in entries() if s.id in {m.entry_id for m in models}):
        notes.append("Models trained on synthetic phantoms (demo registry): nothing here is a clinical finding.")
    return StudyReport(
        study=clean_filename(extras.get("name", "study")), image=np.asarray(extras.get("display", decoded.array)),
        image_format=decoded.format, predictions=preds, models=models, cam=cam, cam_caption=cam_caption,
        guard=guard_text, guard_ok=guard_ok, anomalies=anomalies, neighbors=neighbors, neighbors_note=note,
        technical=technical, notes=notes,
    )


def _predictions(prediction: Any, models: list[ReportModel]) -> list[ReportPrediction]:
    preds = []
    for task, res in prediction.results.items():
        preds.append(ReportPrediction(task_title(task, list(res.classes)), res.label, res.as_dict, res.entry_id,
                                      res.shown_threshold if task == "binary" else None))
        if (e := _entry(res.entry_id)) is not None:
            models.append(_model(e, f"{task} classifier"))
    return preds


def _anomalies(decoded: DecodedImage, models: list[ReportModel]) -> list[ReportAnomaly]:
    """Every healthy-only detector's score, leaving out any detector worse than chance."""
    from cxr_core.anomaly import worse_than_chance

    anomalies = []
    for e in anomaly_detector_entries():
        if worse_than_chance(e):
            continue
        out = anomaly_detector(e.id).score(decoded.array)
        thr = e.detector_card.threshold_or(out.threshold)
        anomalies.append(ReportAnomaly(e.detector_card.label, out.score, thr, out.score >= thr, e.id))
        models.append(_model(e, "anomaly detector"))
    return anomalies


def _guard(verdict: Any, models: list[ReportModel]) -> tuple[str, bool | None]:
    """The chest X-ray check's line and verdict (None: not run, or it failed)."""
    guard_text, guard_ok = "", None
    if verdict is not None and not isinstance(verdict, Exception):
        guard_ok = bool(verdict.looks_like_cxr)
        guard_text = ("looks like a chest X-ray" if guard_ok else "does NOT look like a pediatric chest X-ray: "
                      + "; ".join(verdict.reasons))
        if verdict.distance is not None:
            guard_text += f" (feature distance {verdict.distance:.3g}, flags at {verdict.threshold:.3g})"
    guard = ood_guard()
    if guard is not None and guard.entry_id and (e := _entry(guard.entry_id)) is not None:
        models.append(_model(e, "chest X-ray guard"))
    return guard_text, guard_ok


def _neighbors(prediction: Any) -> tuple[list[ReportNeighbor], str]:
    """The nearest reference images and the note under them (none without a matching index)."""
    if prediction.embedding is None or not prediction.embedding_entry:
        return [], ""
    ref = reference_set(prediction.embedding_entry)
    if ref is None or np.asarray(prediction.embedding).shape[-1] != ref.knn.embeddings.shape[1]:
        return [], ""
    rows, dist, self_row = nearest_references(ref.knn, prediction.embedding, N_NEIGHBORS)
    neighbors = [ReportNeighbor(np.asarray(ref.thumbs[r]), str(ref.labels[r]), float(d), str(ref.splits[r]))
                 for r, d in zip(rows, dist, strict=True)]
    note = (f"Cosine distance between embeddings of {prediction.embedding_entry}; reference set of "
            f"{len(ref):,} images.") + (" The study itself is a reference image and is left out."
                                        if self_row is not None else "")
    return neighbors, note


def render(decoded: DecodedImage, prediction: Any) -> None:
    """A download button; the PDF is built when it is clicked, in memory."""
    from pages.ui.predict_study import digest

    st.download_button(
        "Export study report (PDF)",
        data=lambda: report_pdf(study_report(decoded, prediction)),
        file_name=f"cxr-lens-report-{digest(decoded)[:10]}.pdf",
        mime="application/pdf",
        on_click="ignore",
        key="report_download",
        help="Image, class activation map, predictions with the operating threshold, anomaly score, the seven "
             "nearest reference images, model entries with their card hashes. No DICOM patient field.",
        icon=":material/picture_as_pdf:",
    )
