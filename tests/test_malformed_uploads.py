"""Bad and odd uploads through the Predict page (AppTest): a clear message each, never a traceback.

* A corpus of malformed, odd and valid files (``tests/upload_corpus.py``, built in memory) goes
  through ONE AppTest session; after every file a valid upload must still be predicted, so no
  bad file leaves the page broken. Run with ``-s`` for the summary line
  (inputs tried / rejected cleanly / accepted / crashed).
* DICOM patient identifiers appear nowhere in the rendered page or the session state.
* During a prediction no file is opened for writing and nothing about the upload is logged.
* No Predict-page section caches anything keyed on an upload across sessions.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from tests.upload_corpus import PHI_STRINGS, Case, FileAccessRecorder, corpus, dicom, phantom, valid_upload

TIMEOUT = 180
PAGE = str(REPO / "pages/1_Predict.py")

# pydicom and Pillow warn about malformed input; the properties here are about what the page shows.
pytestmark = pytest.mark.filterwarnings("ignore")


def predict_page(registry: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CXR_REGISTRY", str(registry))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, name: str, data: bytes, mime: str = "application/octet-stream") -> AppTest:
    at.file_uploader(key="upload").set_value((name, data, mime))
    return at.run()


def rendered(at: AppTest) -> str:
    """Every string the page sent to the browser: the protobuf of every element, recursively."""
    out: list[str] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in (getattr(node, "children", None) or {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def flatten(value: Any, depth: int = 0) -> bytes:
    """Bytes of everything reachable from a session-state value (strings, arrays, dataclasses...)."""
    if depth > 8:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tobytes() + repr(value.dtype).encode()
    if isinstance(value, dict):
        return b"|".join(flatten(k, depth + 1) + b"=" + flatten(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return b"|".join(flatten(v, depth + 1) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return flatten({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth + 1)
    if hasattr(value, "__dict__"):
        return flatten(vars(value), depth + 1)
    return repr(value).encode("utf-8", "replace")


def state_bytes(at: AppTest, skip: tuple[str, ...] = ("upload",)) -> bytes:
    """The session state, minus the uploader widget's own value (the file the user chose, kept by
    Streamlit in this session's memory until it is replaced or the session ends)."""
    return b"\n".join(flatten(k) + b"=" + flatten(at.session_state[k]) for k in at.session_state if k not in skip)


def assert_no_phi(at: AppTest, what: str) -> None:
    page = rendered(at)
    state = state_bytes(at)
    for secret in PHI_STRINGS:
        assert secret not in page, f"{what}: {secret!r} is shown on the page"
        assert secret.encode() not in state, f"{what}: {secret!r} is stored in the session state"


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


# ----------------------------------------------------------------------------- the corpus


def check_case(at: AppTest, case: Case) -> str | None:
    """None when the page did what ``case`` promises, else what went wrong."""
    errors, infos = texts(at.error), texts(at.info)
    if case.outcome == "reject":
        if len(at.metric):
            return f"a prediction was shown for a file that should be rejected ({errors})"
        if len(errors) != 1 or "cannot be used" not in errors[0] or case.expect not in errors[0]:
            return f"expected one error containing {case.expect!r}, got {errors}"
        return None
    if len(at.metric) != 2:
        return f"expected a prediction (2 metrics), got {len(at.metric)}; errors: {errors}"
    if errors:
        return f"accepted file, but the page shows errors: {errors}"
    if case.expect and not any(case.expect in i for i in infos):
        return f"expected a notice containing {case.expect!r}, got {infos}"
    return None


def test_malformed_corpus_through_one_predict_session(tiny_registry: Path, monkeypatch):
    at = predict_page(tiny_registry, monkeypatch)
    cases = corpus()
    tally: Counter = Counter()
    problems: list[str] = []
    for i, case in enumerate(cases):
        tally["tried"] += 1
        try:
            upload(at, case.name, case.data, case.mime)
        except Exception as e:  # AppTest itself failed (script timeout, internal error): a crash
            tally["crashed"] += 1
            problems.append(f"{case.id}: the run raised {type(e).__name__}: {e}")
            continue
        if at.exception:
            tally["crashed"] += 1
            problems.append(f"{case.id}: traceback on the page: {[x.message for x in at.exception]}")
            continue
        wrong = check_case(at, case)
        if wrong:
            problems.append(f"{case.id}: {wrong}")
        else:
            tally["rejected cleanly" if case.outcome == "reject" else "accepted"] += 1
            tally["with a notice"] += bool(case.outcome == "accept" and case.expect)
        if PHI_STRINGS[0].encode() in case.data:
            try:
                assert_no_phi(at, case.id)
            except AssertionError as e:
                problems.append(str(e))
        # The same session must still predict a valid upload after this file.
        name, data, mime = valid_upload(seed=i)
        upload(at, name, data, mime)
        if at.exception or len(at.metric) != 2 or at.error:
            problems.append(f"{case.id}: the next valid upload failed: {texts(at.error)} {at.exception}")
        else:
            tally["valid after it"] += 1
    print(
        f"\n[malformed uploads] {tally['tried']} inputs tried: {tally['rejected cleanly']} rejected cleanly, "
        f"{tally['accepted']} accepted ({tally['with a notice']} with a notice), {tally['crashed']} crashed; "
        f"a valid upload was predicted after {tally['valid after it']}/{tally['tried']} of them in the same session"
    )
    assert not problems, "\n".join(problems)
    assert tally["crashed"] == 0
    assert tally["rejected cleanly"] >= 15 and tally["accepted"] >= 10
    assert tally["valid after it"] == tally["tried"]


def test_uploader_takes_any_extension():
    """The uploader has no `type=` filter: DICOM files often have no extension; the decoder decides."""
    tree = ast.parse((REPO / "pages/1_Predict.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "file_uploader"]
    assert calls, "the Predict page has no file_uploader"
    for call in calls:
        kinds = [k for k in call.keywords if k.arg == "type"]
        assert not kinds or (isinstance(kinds[0].value, ast.Constant) and kinds[0].value.value is None)


# ----------------------------------------------------------------------------- patient identifiers


def test_dicom_patient_identifiers_are_never_shown_or_stored(tiny_registry: Path, monkeypatch):
    at = predict_page(tiny_registry, monkeypatch)
    deep = (phantom(128, seed=3).astype(np.uint16) * 16).astype(np.uint16)
    data = dicom(deep, bits_stored=12, window=(2048, 4096))
    assert all(s.encode() in data for s in PHI_STRINGS[:2]), "the test file must carry the identifiers"
    upload(at, "IM000123", data)
    assert not at.exception, at.exception
    assert len(at.metric) == 2, texts(at.error)
    assert "DICOM" in rendered(at)  # the page did render the study (format in the caption)
    assert_no_phi(at, "DICOM upload")
    # A Grad-CAM control change (fragment rerun) and a full rerun keep it that way.
    at.toggle(key="tta").set_value(True)
    at.run()
    assert not at.exception and len(at.metric) == 2
    assert_no_phi(at, "DICOM upload after a rerun")


# ----------------------------------------------------------------------------- no disk, no logs


class _LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # a record whose message cannot be formatted still counts
            self.messages.append(f"{record.name}: {record.msg!r} {record.args!r}")


def test_uploads_are_never_written_to_disk_or_logged(tiny_registry: Path, monkeypatch):
    at = predict_page(tiny_registry, monkeypatch)
    # Warm up: first-use imports and the per-process model caches are not about the upload.
    name, data, mime = valid_upload(seed=11)
    upload(at, name, data, mime)
    assert not at.exception and len(at.metric) == 2

    secret_name = "IM-Doe^Jane-PHI-9876543"  # the file name itself may carry identifiers
    deep = (phantom(128, seed=5).astype(np.uint16) * 16).astype(np.uint16)
    data = dicom(deep, bits_stored=12, window=(2048, 4096))
    files = FileAccessRecorder()
    logs = _LogRecorder()
    loggers = [logging.getLogger(n) for n in ("", "streamlit", "pydicom", "PIL", "cxr_core", "pages")]
    root_level = logging.getLogger().level
    for lg in loggers:
        lg.addHandler(logs)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            files.install(mp)
            upload(at, secret_name, data)
            shown = len(at.metric)
            bad = upload(at, "IM-Doe^Jane-broken", data[: len(data) // 2])  # a rejected one too
    finally:
        logging.getLogger().setLevel(root_level)
        for lg in loggers:
            lg.removeHandler(logs)
    assert shown == 2, "the DICOM upload was not predicted"
    assert not bad.exception, bad.exception
    assert texts(bad.error) and "cannot be used" in texts(bad.error)[0]
    assert files.writes == [], f"files opened for writing during a prediction: {files.writes}"
    for secret in (*PHI_STRINGS, "Doe^Jane"):
        for msg in logs.messages + [str(w.message) for w in caught]:
            assert secret not in msg, f"logged or warned: {msg!r}"


# ----------------------------------------------------------------------------- caches


#: Parameter names that would make a cache keyed on (or holding) an upload.
UPLOAD_PARAMS = {"decoded", "upload", "raw", "data", "array", "gray", "image", "img", "pixels", "prediction", "pred"}
#: Values a process-wide cache key may be made of: registry paths, signatures, entry ids, options.
KEY_TYPES = (str, int, float, bool, type(None))


def _ui_modules() -> list:
    """Every module of pages/ui, imported: where the Predict page and its sections keep their caches."""
    import importlib

    names = sorted(p.stem for p in (REPO / "pages/ui").glob("*.py") if p.stem != "__init__")
    return [importlib.import_module(f"pages.ui.{n}") for n in names]


def _cached_functions() -> dict[str, Any]:
    """{"module.name": CachedFunc} for every st.cache_data / st.cache_resource function in pages/ui."""
    from streamlit.runtime.caching.cache_utils import CachedFunc

    found = {}
    for mod in _ui_modules():
        for name, obj in vars(mod).items():
            if isinstance(obj, CachedFunc) and getattr(obj._info.func, "__module__", None) == mod.__name__:
                found[f"{mod.__name__}.{name}"] = obj
    return found


def _page_script_caches(path: Path) -> list[tuple[str, set[str]]]:
    """(function, parameter names) of each cached function defined in a page script (not importable)."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
            "cache_data" in ast.unparse(d) or "cache_resource" in ast.unparse(d) for d in fn.decorator_list
        ):
            out.append((fn.name, {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}))
    return out


def _plain_key(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain_key(v) for v in value)
    return isinstance(value, KEY_TYPES)


def test_predict_sections_do_not_cache_uploads_across_sessions(tiny_registry: Path, monkeypatch):
    """st.cache_data / st.cache_resource are shared by every session: none may be keyed on an upload.

    The real caches: every cached function in pages/ui (where the Predict page's sections get theirs)
    and in the Predict page script. Statically, no parameter may name an upload; then, during a
    Predict run with an upload, every call to a cached function is recorded and each argument must
    be a plain key (paths, signatures, ids, options), never the upload's bytes, pixels, decoded image,
    prediction or file name. Per-session memoisation (st.session_state) is fine and is what the
    Grad-CAM section uses.
    """
    import inspect

    caches = _cached_functions()
    assert len(caches) >= 1, "no st.cache_* function found in pages/ui: this test inspected nothing"
    for qual, fn in caches.items():
        names = set(inspect.signature(fn._info.func).parameters)
        assert not names & UPLOAD_PARAMS, f"{qual} is cached process-wide on {names & UPLOAD_PARAMS}"
    for name, names in _page_script_caches(Path(PAGE)):
        assert not names & UPLOAD_PARAMS, f"{PAGE}: {name} is cached process-wide on {names & UPLOAD_PARAMS}"

    calls: list[tuple[str, tuple, dict]] = []

    def recording(qual: str, fn: Any):
        def call(*args, **kwargs):
            calls.append((qual, args, kwargs))
            return fn(*args, **kwargs)

        return call

    for qual, fn in caches.items():
        module, _, name = qual.rpartition(".")
        monkeypatch.setattr(__import__(module, fromlist=[name]), name, recording(qual, fn))
    at = predict_page(tiny_registry, monkeypatch)
    name, data, mime = valid_upload(seed=31)
    calls.clear()  # only what the upload's run calls
    upload(at, name, data, mime)
    assert not at.exception, at.exception
    assert len(at.metric) == 2, "the upload was not predicted"
    called = sorted({qual for qual, _, _ in calls})
    assert called, "no cached function was called while predicting an upload: this test checked nothing"
    for qual, args, kwargs in calls:
        for value in (*args, *kwargs.values()):
            assert _plain_key(value), f"{qual} was called with a {type(value).__name__}: cached on the upload"
            assert name not in repr(value), f"{qual} was called with the upload's name"


# ----------------------------------------------------------------------------- failing sections


def test_a_failing_section_or_model_shows_a_message_and_the_rest_still_works(tiny_registry: Path, monkeypatch):
    import pages.ui.predict_neighbors as neighbors
    from cxr_core.predict import Predictor

    def boom(decoded, prediction):
        raise RuntimeError("section exploded")

    at = predict_page(tiny_registry, monkeypatch)
    upload(at, *valid_upload(seed=20))
    baseline = texts(at.subheader)
    assert not at.error and len(at.metric) == 2
    monkeypatch.setattr(neighbors, "render", boom)
    upload(at, *valid_upload(seed=21))
    assert not at.exception, at.exception
    assert len(at.metric) == 2, "the prediction must survive a failing section"
    errors = texts(at.error)
    assert len(errors) == 1 and "neighbors" in errors[0] and "section exploded" in errors[0], errors
    # Only the failing section's own heading is missing: the sections before and after it rendered.
    assert len(texts(at.subheader)) == len(baseline) - 1, (baseline, texts(at.subheader))

    def broken_predict(self, gray, tta=1):
        raise RuntimeError("model weights went missing")

    monkeypatch.setattr(Predictor, "predict", broken_predict)
    upload(at, *valid_upload(seed=22))
    assert not at.exception, at.exception
    assert len(at.metric) == 0
    assert any("could not classify" in e and "went missing" in e for e in texts(at.error)), texts(at.error)


def test_upload_names_are_cleaned_and_escaped():
    from pages.ui.widgets import clean_filename, md_filename

    assert clean_filename("  IM0001\x00\n\t.dcm ") == "IM0001 .dcm"
    assert clean_filename("") == clean_filename(None) == "upload"
    assert len(clean_filename("a" * 500)) == 80
    md = md_filename("# 1. **x** $E=mc^2$ [a](javascript:b) <b>.png")
    unescaped = [c for i, c in enumerate(md) if c in "#*$[]()<>" and (i == 0 or md[i - 1] != "\\")]
    assert unescaped == [], md
