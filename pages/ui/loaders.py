"""Cached loaders: heavy objects load once per process and reload when the registry changes."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, Generic, ParamSpec, TypeVar

import streamlit as st

from cxr_core.compact import has_thumbs
from cxr_core.overlay import settings_path
from cxr_core.predict import Predictor
from cxr_core.registry import EntryStatus, is_release, list_entries, serving_root, usable
from cxr_core.runtime import limit_blas_threads

# Once per server process (this module is imported once): see cxr_core.runtime for the measurement.
limit_blas_threads()

P = ParamSpec("P")
R = TypeVar("R")


def registry_path() -> Path:
    """The registry this server shows: ``$CXR_REGISTRY``, else the committed release (``serving_root``)."""
    return serving_root().resolve()


def registry_signature(root: Path | None = None) -> tuple:
    """Cheap fingerprint of the registry (names, card and file mtimes/sizes): a change busts the caches."""
    root = root or registry_path()
    if not root.is_dir():
        return ()
    sig: list[tuple] = []
    if is_release(root):
        # Saved settings are laid over a release's cards when they are read.
        path = settings_path()
        sig.append(("settings", str(path), *((path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else ())))
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith((".", "_")):
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                st_ = f.stat()
                sig.append((d.name, f.name, st_.st_size, st_.st_mtime_ns))
    return tuple(sig)


class RegistryLoader(Generic[P, R]):
    """A loader of this server's registry: ``loader(*args)`` is ``loader.cached(root, signature, *args)``.

    Every heavy object depends on the registry, so the cache key carries its folder and
    :func:`registry_signature`: a retrained or edited entry changes the signature and reloads,
    while old keys age out through ``max_entries``. Loaders built from other loaders call
    ``.cached`` with the (root, signature) they were given, so one page run sees one registry
    state throughout.
    """

    def __init__(self, fn: Callable[Concatenate[str, tuple, P], R], cache: Callable[[Callable], Callable] | None) -> None:
        self.cached: Callable[Concatenate[str, tuple, P], R] = cache(fn) if cache is not None else fn
        self._signature = inspect.signature(fn)
        self.__name__, self.__qualname__, self.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        self.__module__ = fn.__module__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        root = registry_path()
        call = self._signature.bind(str(root), registry_signature(root), *args, **kwargs)
        # Defaults filled in and everything passed by position: one cache key per distinct call,
        # as when each wrapper spelled out its call.
        call.apply_defaults()
        return self.cached(*call.args)


def registry_loader(
    show_spinner: bool | str = True, max_entries: int | None = None, *, cache: bool = True
) -> Callable[[Callable[Concatenate[str, tuple, P], R]], RegistryLoader[P, R]]:
    """Turn ``fn(root, signature, *args)`` into the page-facing ``fn(*args)`` on this server's registry.

    With ``cache`` (the default) results live in ``st.cache_resource``: models and indexes are
    shared, read-only, by every session of the process rather than copied per call.
    """
    wrap = st.cache_resource(show_spinner=show_spinner, max_entries=max_entries) if cache else None
    return lambda fn: RegistryLoader(fn, wrap)


@registry_loader(show_spinner="Checking the registry…", max_entries=4)
def entries(root: str, signature: tuple) -> list[EntryStatus]:
    """Every registry entry with its status (hashes verified once per registry change)."""
    return list_entries(root)


@registry_loader(show_spinner="Loading models…", max_entries=2)
def predictor(root: str, signature: tuple) -> Predictor:
    return Predictor.from_registry(root, statuses=entries.cached(root, signature))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


# --- anomaly detectors and the OOD guard (issue 5) -------------------------------------------


def anomaly_detector_entries() -> list:
    """Usable healthy-only detector entries (autoencoder + feature detectors), newest first."""
    from cxr_core.anomaly import anomaly_entries

    return anomaly_entries(entries())


@registry_loader(show_spinner=False, max_entries=16)
def anomaly_scores(root: str, signature: tuple, entry_id: str) -> dict:
    """``{"arrays": scores.npz, "tables": {split: ThresholdTable}}`` for one detector entry."""
    from cxr_core.anomaly import ThresholdTable
    from cxr_core.registry import load_entry

    entry = load_entry(root, entry_id)
    data = entry.load_npz("scores.npz")
    tables = {}
    for split in sorted(set(data["splits"].tolist())):
        m = data["splits"] == split
        tables[split] = ThresholdTable(data["labels"][m], data["scores"][m])
    return {"arrays": data, "tables": tables}


@registry_loader(show_spinner="Loading the anomaly detector…", max_entries=8)
def anomaly_detector(root: str, signature: tuple, entry_id: str):
    """A ``LoadedDetector`` for one entry (weights loaded once per registry change)."""
    from cxr_core.anomaly import load_detector
    from cxr_core.registry import load_entry

    return load_detector(load_entry(root, entry_id))


@registry_loader(show_spinner="Loading the chest X-ray guard…", max_entries=2)
def ood_guard(root: str, signature: tuple):
    """The registry's fitted ``OODGuard``, or None when none was trained."""
    from cxr_core.ood import OODGuard
    from cxr_core.registry import select

    entry = select(entries.cached(root, signature), "detector", "ood")
    return None if entry is None else OODGuard.from_entry(entry)


# --- Grad-CAM (Predict page section and the Explain page) ------------------------------------


@st.cache_resource(show_spinner="Preparing Grad-CAM…", max_entries=8)
def _explainer(root: str, signature: tuple, entry_id: str, layer: str | None = None):
    from cxr_core.explain.explainer import Explainer
    from cxr_core.registry import load_entry

    return Explainer.from_entry(load_entry(root, entry_id), target_layer=layer)


@registry_loader(cache=False)
def explainer(root: str, signature: tuple, entry_id: str, layer: str | None = None, method: str | None = None):
    """A CAM ``Explainer`` with its own copy of a classifier: the predictor's model never gets hooks.

    ``layer``: a module name from ``models.gradcam_layer_choices``; None: ``method``'s default layer
    (the default method's when ``method`` is None too).
    """
    from cxr_core.explain.methods import DEFAULT_METHOD
    from cxr_core.models import default_cam_layer

    method = method or DEFAULT_METHOD
    # One explainer (one model copy) per layer actually used: the default one answers for HiResCAM's layer.
    default = _explainer(root, signature, entry_id, None)
    name = layer or default_cam_layer(default.architecture, method)
    return default if name is None or name == default.layer_name else _explainer(root, signature, entry_id, name)


@registry_loader(show_spinner="Loading the classifier…", max_entries=4)
def classifier(root: str, signature: tuple, entry_id: str):
    """A ``LoadedClassifier`` for any classifier entry (not only the one the predictor selected)."""
    from cxr_core.inference import load_classifier
    from cxr_core.registry import load_entry

    return load_classifier(load_entry(root, entry_id))


@registry_loader(show_spinner="Classifying every image of the split (once per model)…", max_entries=8)
def split_predictions(root: str, signature: tuple, entry_id: str, split: str):
    """``GalleryItem`` per image of a split of the classifier's own dataset; raises ``DatasetError`` if it is gone."""
    from cxr_core.explain.gallery import card_dataset, predict_split

    clf = classifier.cached(root, signature, entry_id)
    return predict_split(clf, card_dataset(clf.card), split)


@registry_loader(show_spinner=False, max_entries=256)
def gallery_cam(
    root: str, signature: tuple, entry_id: str, path: str, method: str, target: str | None, side: int = 320,
    layer: str | None = None,
):
    """(gray, cam, target name, empty) of one dataset image, shrunk to ``side`` px, cached per process."""
    from cxr_core.data import safe_join
    from cxr_core.explain.overlay import downscale
    from cxr_core.imaging import read_gray

    ex = explainer.cached(root, signature, entry_id, layer, method)
    gray = read_gray(safe_join(_dataset_root(root, signature, entry_id), path))
    exp = ex.explain(gray, method=method, target=target)
    small_gray, small_cam = downscale(gray, exp.cam, side)
    return small_gray, small_cam, exp.target_name, exp.empty


def _dataset_root(root: str, signature: tuple, entry_id: str) -> str:
    return classifier.cached(root, signature, entry_id).card.dataset.root


# --- Models & data page (issue 3) ----------------------------------------------------------------


@st.cache_data(show_spinner="Reading image sizes from the file headers…", max_entries=8)
def _image_sizes(root: str, fingerprint: str | None) -> dict:
    from cxr_core.datastats import image_sizes

    s = image_sizes(root)
    return {"split": s.split, "label": s.label, "subtype": s.subtype, "width": s.width, "height": s.height,
            "unreadable": s.unreadable}


def dataset_image_sizes(root: str, fingerprint: str | None = None) -> dict:
    """Header-read image sizes of a dataset folder as arrays, cached per (folder, card fingerprint)."""
    return _image_sizes(str(root), fingerprint)


# --- Embedding index (issue 4) -------------------------------------------------------------------


@registry_loader(show_spinner="Loading the embedding index…", max_entries=4)
def reference_set(root: str, signature: tuple, entry_id: str):
    """The entry's embedding index (``cxr_core.reference.ReferenceSet``, thumbnails memory-mapped), or None."""
    from cxr_core.reference import ReferenceSet

    status = next((s for s in entries.cached(root, signature) if s.id == entry_id), None)
    if status is None or not status.ok:
        return None
    entry = status.entry()
    return ReferenceSet.from_entry(entry) if entry.has("index.npz") and has_thumbs(entry.info.files) else None


def indexed_classifiers() -> list[EntryStatus]:
    """Usable classifier entries that carry an embedding index, newest first."""
    return [
        s for s in usable(entries(), "classifier")
        if s.info and s.info.has("index.npz") and has_thumbs(s.info.files)
    ]
