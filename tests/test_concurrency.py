"""Eight Predict-page sessions at once against one registry: no errors, no cross-talk, models loaded once.

Each session is an AppTest instance in its own thread, uploading its own image at the same
moment (a barrier releases them together). What must hold:

* no exception, and each session sees the prediction of ITS image (equal to a serial reference,
  Grad-CAM included: the explainer's hooks must not pick up another session's forward pass);
* the models load once per process: ``Predictor.from_registry`` runs once for all sessions, and a
  session opened afterwards loads nothing (AppTest instances in one process share st.cache_resource,
  as the sessions of one server do).

AppTest keeps two pieces of per-run state in process globals (the mock ``Runtime`` it installs
and clears around each run, and a patch of ``config.get_option``), which runs in threads would
undo under each other, and it compiles the page anew on every run. The ``shared_runtime``
fixture gives all sessions one runtime, one config patch and one script cache, which is what a
real server has.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from tests.upload_corpus import valid_upload

N_SESSIONS = 8
TIMEOUT = 300
PAGE = str(REPO / "pages/1_Predict.py")

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def shared_runtime(monkeypatch):
    """One mock Runtime and one appTest config patch for every AppTest run of the test."""
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test as app_test_module
    from streamlit.testing.v1 import local_script_runner
    from streamlit.testing.v1.util import patch_config_options

    runtime = MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    runtime.bidi_component_registry = components

    class RuntimeSlot:  # where each AppTest run now puts (and clears) its own mock runtime
        _instance = None

    monkeypatch.setattr(app_test_module, "Runtime", RuntimeSlot)
    # A server compiles a page once into its runtime's script cache (under a lock); AppTest compiles
    # it on every run, and CPython 3.11 < 3.11.9 can fail ast.parse in two threads at once
    # ("AST constructor recursion depth mismatch", gh-106905).
    scripts = ScriptCache()
    monkeypatch.setattr(app_test_module, "ScriptCache", lambda: scripts)
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: scripts)
    monkeypatch.setattr(app_test_module, "patch_config_options", lambda overrides: contextlib.nullcontext())
    monkeypatch.setattr(Runtime, "_instance", runtime)
    with patch_config_options({"global.appTest": True}):
        yield runtime


class LoadCounter:
    """Counts model loads: Predictor.from_registry calls and load_classifier calls per entry."""

    def __init__(self, monkeypatch) -> None:
        import cxr_core.inference as inference
        import cxr_core.predict as predict

        self.lock = threading.Lock()
        self.predictors = 0
        self.classifiers: Counter = Counter()
        original_from_registry = predict.Predictor.from_registry.__func__
        original_load = inference.load_classifier

        def from_registry(cls, *args, **kwargs):
            with self.lock:
                self.predictors += 1
            return original_from_registry(cls, *args, **kwargs)

        def load_classifier(entry, *args, **kwargs):
            with self.lock:
                self.classifiers[entry.id] += 1
            return original_load(entry, *args, **kwargs)

        monkeypatch.setattr(predict.Predictor, "from_registry", classmethod(from_registry))
        monkeypatch.setattr(inference, "load_classifier", load_classifier)
        monkeypatch.setattr(predict, "load_classifier", load_classifier)

    def snapshot(self) -> tuple[int, dict]:
        with self.lock:
            return self.predictors, dict(self.classifiers)


def references(registry: Path, uploads: list[bytes]) -> list[dict]:
    """What each session must show: labels, confidences and the default Grad-CAM, computed serially."""
    from cxr_core.explain import Explainer
    from cxr_core.imaging import decode_image
    from cxr_core.predict import Predictor
    from cxr_core.registry import load_entry

    predictor = Predictor.from_registry(str(registry))
    explainer = Explainer.from_entry(load_entry(registry, predictor.classifiers["binary"].entry.id))
    out = []
    for data in uploads:
        gray = decode_image(data).array
        pred = predictor.predict(gray)
        out.append({
            "metrics": sorted((r.label, f"{r.confidence:.1%} confidence") for r in pred.results.values()),
            "cam": explainer.explain(gray, target=pred.results["binary"].label).cam,
        })
    return out


def shown(at: AppTest) -> dict:
    cams = [v for v in (at.session_state["gradcam_cache"] if "gradcam_cache" in at.session_state else {}).values()]
    return {
        "metrics": sorted((m.value, m.delta) for m in at.metric),
        "cams": [c.cam for c in cams],
        "errors": [e.value for e in at.error],
        "exception": [x.message for x in at.exception],
    }


def test_eight_sessions_predict_at_once_and_models_load_once(tiny_registry: Path, tmp_path: Path, monkeypatch,
                                                             shared_runtime):
    # A private copy: a registry path no earlier test loaded, so this test sees the first load.
    registry = tmp_path / "registry"
    shutil.copytree(tiny_registry, registry)
    uploads = [valid_upload(seed=i, subtype=("normal", "bacteria", "virus")[i % 3]) for i in range(N_SESSIONS)]
    expected = references(registry, [data for _, data, _ in uploads])
    counter = LoadCounter(monkeypatch)
    monkeypatch.setenv("CXR_REGISTRY", str(registry))

    start = threading.Barrier(N_SESSIONS, timeout=TIMEOUT)
    sessions = [AppTest.from_file(PAGE, default_timeout=TIMEOUT) for _ in range(N_SESSIONS)]

    def session(i: int, upload_index: int) -> dict:
        at = sessions[i]
        if upload_index == i:  # first round: open the page, then all upload at the same moment
            at.run()
        start.wait()
        name, data, mime = uploads[upload_index]
        at.file_uploader(key="upload").set_value((name, data, mime))
        at.run()
        return shown(at)

    t0 = time.perf_counter()
    rounds = []
    with ThreadPoolExecutor(N_SESSIONS) as pool:
        for shift in (0, 3):  # then every session uploads another session's image
            order = [(i + shift) % N_SESSIONS for i in range(N_SESSIONS)]
            rounds.append((order, list(pool.map(session, range(N_SESSIONS), order))))
    seconds = time.perf_counter() - t0
    after_concurrent = counter.snapshot()

    problems = []
    for order, results in rounds:
        for i, (k, got) in enumerate(zip(order, results, strict=True)):
            if got["exception"] or got["errors"]:
                problems.append(f"session {i}: {got['exception']} {got['errors']}")
                continue
            if got["metrics"] != expected[k]["metrics"]:
                problems.append(f"session {i} shows {got['metrics']} for image {k}, expected {expected[k]['metrics']}")
            if not any(c.shape == expected[k]["cam"].shape and np.allclose(c, expected[k]["cam"], atol=1e-4)
                       for c in got["cams"]):
                problems.append(f"session {i}: no Grad-CAM equal to the serial one for image {k}")
    assert not problems, "\n".join(problems)

    # A session opened later finds every model in the process cache.
    late = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    late.file_uploader(key="upload").set_value(uploads[0])
    late.run()
    assert not late.exception and len(late.metric) == 2
    predictors, classifiers = counter.snapshot()
    print(
        f"\n[concurrency] {N_SESSIONS} sessions x 2 concurrent uploads in {seconds:.1f} s, all correct; "
        f"Predictor.from_registry calls: {predictors}; load_classifier calls per entry: {classifiers}"
    )
    assert predictors == 1, f"the predictor was built {predictors} times"
    assert (predictors, classifiers) == after_concurrent, "a later session loaded models again"
    # Once for the predictor and once for the Grad-CAM explainer's own copy, never per session.
    assert classifiers and max(classifiers.values()) <= 2, classifiers
