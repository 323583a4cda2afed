"""Study report (PDF, parsed back), DICOM display (window/level, MONOCHROME1, technical header) and the PHI
test: a DICOM full of patient identifiers through the worklist, the CSV, the report, both pages and the logs."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.dicom_view import read_dicom, window
from cxr_core.report import (
    DISCLAIMER,
    ReportAnomaly,
    ReportModel,
    ReportNeighbor,
    ReportPrediction,
    StudyReport,
    report_pdf,
)
from tests.conftest import REPO
from tests.upload_corpus import phantom

TIMEOUT = 180

#: Patient-identifying values written into the DICOM below: none may appear anywhere.
PHI = {
    "PatientName": "Zyxwv^Quentin^Hidden",
    "PatientID": "MRN-55501234",
    "PatientBirthDate": "20170412",
    "AccessionNumber": "ACC-77120093",
    "InstitutionName": "Hidden Valley Childrens Hospital",
    "ReferringPhysicianName": "Qwerty^Marguerite",
    "OtherPatientIDs": "ALT-44019283",
    "PatientAddress": "12 Secret Lane",
    "StudyID": "STUDY-90817",
    "OperatorsName": "Plmokn^Operator",
}
PHI_NEEDLES = [*PHI.values(), "Zyxwv", "Quentin", "55501234", "77120093", "Hidden Valley", "Qwerty", "44019283",
               "Secret Lane", "90817", "Plmokn"]


def phi_dicom(pixels: np.ndarray | None = None, *, photometric: str = "MONOCHROME2", voi_lut: bool = False,
              window_cw: tuple[float, float] | None = (2048.0, 4096.0)) -> bytes:
    """A DX chest film (12-bit phantom) with every PHI field above set, a view position and a pixel spacing."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if pixels is None:
        pixels = phantom(160, seed=11, subtype="bacteria").astype(np.uint16) * 16
    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.StudyDate = "20240305"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.PixelSpacing = [0.139, 0.139]
    ds.set_pixel_data(pixels, photometric, 12)
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        # A gamma-like table (not a straight line): the display the file asks for.
        table = np.rint(65535 * (np.arange(4096) / 4095.0) ** 0.7).astype("<u2")
        item.add_new(0x00283006, "US", table.tolist())
        ds.VOILUTSequence = [item]
    elif window_cw is not None:
        ds.WindowCenter, ds.WindowWidth = window_cw
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def assert_no_phi(text: str, where: str) -> None:
    found = [n for n in PHI_NEEDLES if n.lower() in text.lower()]
    assert not found, f"patient data {found} in {where}"


def pdf_text(data: bytes) -> tuple[str, int, int]:
    """(all text, number of pages, number of images) of a PDF, read with pypdf."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    meta = " ".join(str(v) for v in (reader.metadata or {}).values())
    n_images = sum(len(page.images) for page in reader.pages)
    return text + "\n" + meta, len(reader.pages), n_images


# --- the report itself ----------------------------------------------------------------------


def _report(**kw) -> StudyReport:
    gray = phantom(160, seed=3, subtype="virus")
    rgb = np.stack([gray, gray // 2, gray // 3], axis=-1)
    base = dict(
        study="viral_03.png", image=gray, image_format="PNG", cam=rgb, cam_caption="HiResCAM for virus.",
        predictions=[
            ReportPrediction("Normal vs pneumonia", "PNEUMONIA", {"NORMAL": 0.124, "PNEUMONIA": 0.876}, "clf-bin",
                             threshold=0.42),
            ReportPrediction("Normal / bacterial / viral", "virus", {"normal": 0.1, "bacteria": 0.2, "virus": 0.7},
                             "clf-mc"),
        ],
        anomalies=[ReportAnomaly("Autoencoder", 0.0123, 0.0100, True, "ae-1")],
        neighbors=[ReportNeighbor(phantom(64, seed=i), ["NORMAL", "PNEUMONIA"][i % 2], 0.05 * (i + 1), "test")
                   for i in range(7)],
        models=[ReportModel("clf-bin", "binary classifier", "a" * 64, "b" * 64),
                ReportModel("ae-1", "anomaly detector", "c" * 64, None)],
        guard="looks like a chest X-ray", guard_ok=True,
        created=datetime(2026, 12, 2, 5, 30, tzinfo=UTC),
    )
    base.update(kw)
    return StudyReport(**base)


def test_report_pdf_content_parsed_back():
    data = report_pdf(_report())
    assert data.startswith(b"%PDF-")
    text, pages, images = pdf_text(data)
    flat = " ".join(text.split())
    assert pages == 1
    assert images >= 2 + 7  # the image, the map, seven neighbour thumbnails
    assert "viral_03.png" in flat and "2026-12-02 05:30 UTC" in flat
    assert "Research use, not a medical device." in flat
    assert "Normal vs pneumonia: PNEUMONIA (NORMAL 12.4%, PNEUMONIA 87.6%)" in flat
    assert "operating threshold on P(pneumonia) 0.42" in flat
    assert "virus (normal 10.0%, bacteria 20.0%, virus 70.0%)" in flat
    assert re.search(r"Autoencoder: score 0\.0123 >= threshold 0\.01 \(FLAGGED", flat)
    for i in range(7):
        assert f"{i + 1}. {['NORMAL', 'PNEUMONIA'][i % 2]}, d={0.05 * (i + 1):.3f} (test)" in flat
    assert "clf-bin (binary classifier): card sha256 " + "a" * 64 in flat.replace(" ", " ")
    assert "weights sha256 " + "b" * 64 in flat


def test_report_of_a_flagged_study_says_so_before_the_predictions():
    text, _, _ = pdf_text(report_pdf(_report(guard="does NOT look like a pediatric chest X-ray: colour",
                                             guard_ok=False)))
    flat = " ".join(text.split())
    assert flat.index("WARNING - chest X-ray check") < flat.index("Normal vs pneumonia: PNEUMONIA")
    assert "not meaningful for this image" in flat


def test_report_survives_odd_text_and_no_extras():
    data = report_pdf(_report(study="naïve “film” ≥ 5 — 日本.png", cam=None, anomalies=[], neighbors=[]))
    text, _, _ = pdf_text(data)
    assert "No reference index" in text and "No healthy-only anomaly detector" in text


def test_card_hashes_match_the_registry_files(tiny_registry: Path):
    from cxr_core.registry import list_entries
    from cxr_core.report import card_hashes

    entry = next(s.entry() for s in list_entries(str(tiny_registry)) if s.ok)
    card_sha, weights_sha = card_hashes(entry)
    assert card_sha == hashlib.sha256((entry.path / "card.json").read_bytes()).hexdigest()
    assert weights_sha == hashlib.sha256((entry.path / "weights.safetensors").read_bytes()).hexdigest()


def test_study_report_from_the_registry(tiny_registry: Path, monkeypatch):
    """The page's report builder on a real registry: both models, their card hashes, the map."""
    monkeypatch.setenv("CXR_REGISTRY", str(tiny_registry))
    from cxr_core.imaging import decode_image
    from cxr_core.predict import Predictor
    from pages.ui.predict_report import study_report
    from tests.upload_corpus import pil_bytes

    decoded = decode_image(pil_bytes(phantom(128, seed=4, subtype="bacteria"), "PNG"))
    pred = Predictor.from_registry(str(tiny_registry)).predict(decoded.array)
    pred.extras.update(name="bact_04.png")
    rep = study_report(decoded, pred)
    text, _, images = pdf_text(report_pdf(rep))
    flat = " ".join(text.split())
    for res in pred.results.values():
        assert f"{res.entry_id} ({res.task} classifier): card sha256 " in flat
        assert f"{res.label} (" in flat
    assert images >= 2 and rep.cam is not None
    assert DISCLAIMER in flat


# --- DICOM display --------------------------------------------------------------------------


def test_dicom_header_is_technical_only():
    study = read_dicom(phi_dicom())
    rows = dict(study.header.rows_for_display())
    assert rows["Modality"] == "DX" and rows["View position"] == "PA"
    assert rows["Photometric interpretation"] == "MONOCHROME2"
    assert rows["Rows × columns"] == "160 × 160" and rows["Pixel spacing (mm)"] == "0.139 × 0.139"
    assert rows["Bits stored / allocated"] == "12 / 16"
    assert study.file_window == (2048.0, 4096.0)
    assert_no_phi(repr(study.header) + repr(rows), "the technical header")


def test_window_level_and_monochrome1():
    px = (np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) % 4096)
    m2 = read_dicom(phi_dicom(px))
    m1 = read_dicom(phi_dicom(px, photometric="MONOCHROME1"))
    a, b = window(m2, 2048, 4096), window(m1, 2048, 4096)
    assert a.dtype == np.uint8 and a.shape == (100, 100)
    np.testing.assert_array_equal(b, 255 - a)  # MONOCHROME1: bone bright after inversion
    narrow = window(m2, 1000, 200)
    assert narrow[px < 900].max() == 0 and narrow[px > 1100].min() == 255


def test_voi_lut_is_the_default_display():
    from cxr_core.imaging import decode_image

    data = phi_dicom(voi_lut=True, window_cw=None)
    study = read_dicom(data)
    assert study.has_voi_lut and study.header.stored_display == "VOI LUT"
    assert "DICOM VOI LUT applied." in decode_image(data).notices


# --- PHI: never shown, exported or logged ---------------------------------------------------


def _tree_text(at: AppTest) -> str:
    parts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    # Tables and dataframes travel as Arrow bytes: read them back as text too.
    for el in [*at.table, *at.dataframe]:
        parts.append(el.value.to_csv())
    return "\n".join(parts)


def test_phi_never_shown_exported_or_logged(tiny_registry: Path, monkeypatch, caplog, capfd):
    from cxr_core.imaging import decode_image
    from cxr_core.predict import Predictor
    from cxr_core.worklist import WorklistProcessor, expand_uploads, rows_to_csv
    from pages.ui.predict_report import study_report

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CXR_REGISTRY", str(tiny_registry))
    data = phi_dicom()
    assert PHI["PatientName"].encode() in data  # the fields are really there

    # Worklist rows and CSV.
    rows = WorklistProcessor(Predictor.from_registry(str(tiny_registry))).run(expand_uploads([("IM0042", data)]))
    assert rows[0].ok and rows[0].format == "DICOM"
    assert_no_phi(repr(rows) + rows_to_csv(rows).decode(), "the worklist rows / CSV")

    # Report (with the technical header in it).
    decoded = decode_image(data, filename="IM0042")
    pred = Predictor.from_registry(str(tiny_registry)).predict(decoded.array)
    pred.extras.update(name="IM0042", technical=read_dicom(data).header.rows_for_display())
    text, _, _ = pdf_text(report_pdf(study_report(decoded, pred)))
    assert "Modality: DX" in " ".join(text.split()) and "View position: PA" in " ".join(text.split())
    assert_no_phi(text, "the report")

    # Both pages, header panel open, custom window.
    at = AppTest.from_file(str(REPO / "pages/6_Worklist.py"), default_timeout=TIMEOUT).run()
    at.file_uploader(key="worklist_upload").set_value([("IM0042", data, "application/octet-stream")])
    at.run()
    at.selectbox(key="worklist_open").set_value(1)
    at.run()
    assert not at.exception, at.exception
    assert any("Window / level" == s.label for s in at.selectbox)
    shown = _tree_text(at)
    assert "MONOCHROME2" in shown and "0.139 × 0.139" in shown and "DX" in shown
    at.selectbox(key="worklist_dicom_mode").set_value("Custom")
    at.run()
    assert not at.exception, at.exception
    assert any(s.label == "Window centre" for s in at.slider)
    shown += _tree_text(at) + repr(at.session_state.to_dict())
    assert_no_phi(shown, "the Worklist page")

    at = AppTest.from_file(str(REPO / "pages/1_Predict.py"), default_timeout=TIMEOUT).run()
    at.file_uploader(key="upload").set_value(("IM0042", data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert len([m for m in at.metric if m.label == "Prediction"]) == 2
    assert_no_phi(_tree_text(at), "the Predict page")

    out, err = capfd.readouterr()
    assert_no_phi(caplog.text + out + err, "the logs")


@pytest.mark.parametrize("field", ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"])
def test_header_reader_never_touches_patient_fields(field: str, monkeypatch):
    """Reading a field outside the allow-list would fail here: the dataset refuses patient attributes."""
    import pydicom.dataset

    real = pydicom.dataset.Dataset.get

    def guarded(self, key, default=None):
        assert key != field, f"dicom_view read {field}"
        return real(self, key, default)

    monkeypatch.setattr(pydicom.dataset.Dataset, "get", guarded)
    read_dicom(phi_dicom())
