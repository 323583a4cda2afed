"""The model registry: the contract between ``train/`` and the app.

One folder per entry under ``$CXR_REGISTRY`` (writers default to ``./registry``; the app
serves the committed release registry when ``$CXR_REGISTRY`` is unset, see ``serving_root``)::

    <entry-id>/card.json            metadata (JSON), incl. sha256 of every other file
    <entry-id>/weights.safetensors  tensors (safetensors; never pickle)
    <entry-id>/*.npz, *.npy         arrays, read with allow_pickle=False

Entries are written into a hidden temporary folder and renamed into place, and card
updates are read-modify-write under a file lock with an atomic replace, so readers
never see half an entry and concurrent threshold saves leave a valid card. Every
file's hash is verified on load; a broken entry is *reported* (``EntryStatus``), so
that the app can show it as broken and keep serving the others.

A *release* registry (a root holding ``release.json``) is read-only: the manifest holds the
sha256 of every card, so an edited card breaks its entry like an edited file does, and
settings a user saves (a tuned threshold) go to the per-user overlay (``cxr_core.overlay``),
which is applied when the card is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cards import Card, ClassifierCard, DetectorCard, read_card
from .config import Paths
from .overlay import OVERLAY_KEYS, apply_overlay, save_entry_settings

SCHEMA_VERSION = 1
CARD_NAME = "card.json"
WEIGHTS_NAME = "weights.safetensors"
RELEASE_MANIFEST = "release.json"
KINDS = ("classifier", "autoencoder", "detector")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """A registry entry that cannot be used; the message says why in plain words."""


def registry_root(root: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``root``, else ``$CXR_REGISTRY``, else ``./registry``."""
    paths = Paths()
    return Path(root or os.environ.get(paths.registry_env) or paths.registry_default)


def release_dir() -> Path:
    """Where the committed release registries live: ``release/`` at the repository root."""
    return Path(__file__).resolve().parent.parent / Paths().release_dir


def serving_root() -> Path:
    """The registry the app serves: ``$CXR_REGISTRY``, else the committed release, else ``./registry``."""
    paths = Paths()
    env = os.environ.get(paths.registry_env)
    if env:
        return Path(env)
    release = release_dir() / paths.release_default
    if (release / RELEASE_MANIFEST).is_file():
        return release
    return Path(paths.registry_default)


def is_release(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a read-only release registry (it holds a ``release.json`` manifest)."""
    return (Path(root) / RELEASE_MANIFEST).is_file()


def read_release_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The release manifest of ``root`` (``{}`` when it is not a release)."""
    path = Path(root) / RELEASE_MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"{RELEASE_MANIFEST} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """``git describe`` of the checkout when available, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def new_entry_id(kind: str, task: str | None, architecture: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    parts = [kind, task or "", (architecture or "").replace("_", "-"), stamp, os.urandom(2).hex()]
    return "-".join(p for p in parts if p)


def _check_name(name: str, what: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(name) or name in (".", ".."):
        raise RegistryError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def _write_arrays(path: Path, arrays: dict[str, np.ndarray] | np.ndarray, compress: bool = False) -> None:
    """Write .npz (dict; zip-deflated with ``compress``) or .npy (one array), refusing object arrays (they need pickle)."""
    items = arrays.items() if isinstance(arrays, dict) else [("array", arrays)]
    for key, arr in items:
        if np.asarray(arr).dtype.kind == "O":
            raise RegistryError(f"array {key!r} has dtype object, which would need pickle")
    if path.suffix == ".npz":
        save = np.savez_compressed if compress else np.savez
        save(path, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[union-attr]
    else:
        np.save(path, np.asarray(arrays), allow_pickle=False)


def _json_dump_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".card-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def _locked(entry_dir: Path) -> Iterator[None]:
    with open(entry_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Entry:
    """A verified registry entry."""

    id: str
    path: Path
    card: dict[str, Any]

    # The typed card, parsed once per card dict (update_card / save_settings put in a new dict).
    _info: tuple[dict[str, Any], ClassifierCard | DetectorCard] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def info(self) -> ClassifierCard | DetectorCard:
        """The card in its typed form (:mod:`cxr_core.cards`)."""
        if self._info is None or self._info[0] is not self.card:
            self._info = (self.card, read_card(self.card))
        return self._info[1]

    @property
    def classifier_card(self) -> ClassifierCard:
        """The typed card of a classifier entry (RegistryError for another kind)."""
        card = self.info
        if not isinstance(card, ClassifierCard):
            raise RegistryError(f"entry {self.id} is a {card.kind}, not a classifier")
        return card

    @property
    def detector_card(self) -> DetectorCard:
        """The typed card of a detector or autoencoder entry (RegistryError for a classifier)."""
        card = self.info
        if not isinstance(card, DetectorCard):
            raise RegistryError(f"entry {self.id} is a {card.kind}, not a detector")
        return card

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def task(self) -> str | None:
        return self.info.task

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    def has(self, name: str) -> bool:
        return self.info.has(name)

    def file(self, name: str) -> Path:
        _check_name(name, "file name", _FILE_RE)
        if not self.has(name):
            raise RegistryError(f"entry {self.id} has no file {name!r}")
        return self.path / name

    def load_weights(self, name: str = WEIGHTS_NAME) -> dict[str, Any]:
        """The tensors of a safetensors file; float16 ones (release storage) come back as float32."""
        import torch
        from safetensors.torch import load_file

        tensors = load_file(str(self.file(name)))
        return {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.file(name), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def load_npy(self, name: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.file(name), mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass
class EntryStatus:
    """What listing found for one entry folder: usable or broken, and why."""

    id: str
    path: Path
    ok: bool
    reason: str | None
    card: dict[str, Any] | None

    _info: tuple[dict[str, Any], ClassifierCard | DetectorCard] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def info(self) -> ClassifierCard | DetectorCard | None:
        """The typed card of a usable entry (parsed once); None for a broken one."""
        if not self.ok or self.card is None:
            return None
        if self._info is None or self._info[0] is not self.card:
            self._info = (self.card, read_card(self.card))
        return self._info[1]

    def entry(self) -> Entry:
        if not self.ok or self.card is None:
            raise RegistryError(f"entry {self.id} is broken: {self.reason}")
        return Entry(self.id, self.path, self.card)


def write_entry(
    root: str | os.PathLike | None,
    card: Card | dict[str, Any],
    *,
    weights: dict[str, Any] | None = None,
    arrays: dict[str, dict[str, np.ndarray] | np.ndarray] | None = None,
    entry_id: str | None = None,
    compress: bool = False,
) -> Entry:
    """Write a new entry atomically and return it.

    ``card``: a typed card (:mod:`cxr_core.cards`; a plain dict is accepted for tests and tools)
    with at least ``kind``; ``id``, ``schema_version``, ``created_at``,
    ``code_version`` and ``files`` are filled in here. ``compress`` deflates the .npz files
    (the release: its embeddings are 40 % zeros after ReLU6; readers see no difference).
    """
    from safetensors.torch import save_file

    root_p = registry_root(root)
    card = card.to_dict() if isinstance(card, Card) else card
    kind = card.get("kind")
    if kind not in KINDS:
        raise RegistryError(f"card kind must be one of {KINDS}, got {kind!r}")
    entry_id = _check_name(
        entry_id or new_entry_id(kind, card.get("task"), card.get("architecture")), "entry id", _ID_RE
    )
    final = root_p / entry_id
    if final.exists():
        raise RegistryError(f"entry {entry_id} already exists in {root_p}")
    root_p.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry_id}-", dir=root_p))
    try:
        if weights is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"entry": entry_id})
        for name, data in (arrays or {}).items():
            _write_arrays(tmp / _check_name(name, "file name", _FILE_RE), data, compress)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.iterdir())
            if p.is_file() and not p.name.startswith(".")
        }
        full = {
            "schema_version": SCHEMA_VERSION,
            "id": entry_id,
            **{k: v for k, v in card.items() if k not in ("id", "schema_version", "files")},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "files": files,
        }
        _json_dump_atomic(tmp / CARD_NAME, full)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Entry(entry_id, final, full)


def add_files(entry: Entry, arrays: dict[str, dict[str, np.ndarray] | np.ndarray]) -> Entry:
    """Add or replace array files in an existing entry, atomically per file, and record their hashes."""
    written: dict[str, dict[str, Any]] = {}
    with _locked(entry.path):
        for name, data in arrays.items():
            _check_name(name, "file name", _FILE_RE)
            if name in (CARD_NAME, WEIGHTS_NAME):
                raise RegistryError(f"{name} cannot be replaced through add_files")
            suffix = Path(name).suffix
            fd, tmp = tempfile.mkstemp(prefix=".add-", suffix=suffix, dir=entry.path)
            os.close(fd)
            try:
                _write_arrays(Path(tmp), data)
                written[name] = {"sha256": sha256_file(tmp), "bytes": os.path.getsize(tmp)}
                os.replace(tmp, entry.path / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        card = _read_card(entry.path)
        card.setdefault("files", {}).update(written)
        _json_dump_atomic(entry.path / CARD_NAME, card)
    entry.card = card
    return entry


def update_card(entry: Entry | str | os.PathLike, change: Callable[[dict[str, Any]], None] | dict[str, Any]) -> dict[str, Any]:
    """Read-modify-write the card under a lock, replacing it atomically.

    ``change`` is a dict merged at the top level, or a function that edits the card
    in place. ``files`` and ``id`` cannot be changed this way.
    """
    path = entry.path if isinstance(entry, Entry) else Path(entry)
    if is_release(path.parent):
        raise RegistryError(f"{path.parent} is a release registry and is never modified; save settings "
                            "through cxr_core.overlay instead")
    with _locked(path):
        card = _read_card(path)
        before = (card.get("id"), json.dumps(card.get("files"), sort_keys=True))
        if callable(change):
            change(card)
        else:
            card.update(change)
        if (card.get("id"), json.dumps(card.get("files"), sort_keys=True)) != before:
            raise RegistryError("update_card may not change the entry id or its file list")
        card["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _json_dump_atomic(path / CARD_NAME, card)
    if isinstance(entry, Entry):
        entry.card = card
    return card


def update_info(entry: Entry, change: Callable[[ClassifierCard | DetectorCard], Card]) -> ClassifierCard | DetectorCard:
    """:func:`update_card` through the typed card: ``change`` returns the new card (:mod:`cxr_core.cards` writes it)."""
    def apply(card: dict[str, Any]) -> None:
        kept = {k: card[k] for k in ("schema_version", "id", "files") if k in card}
        new = change(read_card(card)).to_dict()
        card.clear()
        card.update(new | kept)

    update_card(entry, apply)
    return entry.info


def save_settings(entry: Entry, changes: dict[str, Any]) -> str:
    """Save user-tunable card values (``overlay.OVERLAY_KEYS``): into the card, or, for a release
    entry, into the user's settings file. Returns where they went, in words for the page."""
    bad = sorted(set(changes) - set(OVERLAY_KEYS))
    if bad:
        raise RegistryError(f"not a user setting: {', '.join(bad)}")
    if is_release(entry.path.parent):
        path = save_entry_settings(entry.id, changes)
        entry.card = {**entry.card, **changes}
        return f"your settings file `{path}` (the release registry itself is never modified)"
    update_card(entry, lambda c: c.update(changes))
    return f"the card of `{entry.id}`"


def _read_card(path: Path) -> dict[str, Any]:
    card_path = path / CARD_NAME
    if card_path.is_symlink():
        raise RegistryError("card.json is a symbolic link")
    if not card_path.is_file():
        raise RegistryError("card.json is missing")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"card.json is not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise RegistryError("card.json does not hold a JSON object")
    return card


def verify_entry(path: str | os.PathLike, *, check_hashes: bool = True) -> EntryStatus:
    """Check an entry folder: card readable, schema known, every listed file present and intact."""
    p = Path(path)
    try:
        # A link could make a verified-looking entry read anything the server can: files must be
        # plain files inside the entry folder, and the folder itself must not be a link.
        if p.is_symlink():
            raise RegistryError("the entry folder is a symbolic link (entries must be real folders)")
        card = _read_card(p)
        entry_id = card.get("id")
        if entry_id != p.name:
            raise RegistryError(f"card id {entry_id!r} does not match the folder name {p.name!r}")
        if card.get("schema_version") != SCHEMA_VERSION:
            raise RegistryError(f"unsupported schema_version {card.get('schema_version')!r} (expected {SCHEMA_VERSION})")
        if card.get("kind") not in KINDS:
            raise RegistryError(f"unknown kind {card.get('kind')!r}")
        files = card.get("files")
        if not isinstance(files, dict) or not files:
            raise RegistryError("the card lists no files")
        for name, meta in files.items():
            _check_name(name, "file name", _FILE_RE)
            fp = p / name
            if fp.is_symlink():
                raise RegistryError(f"{name} is a symbolic link (registry files must be plain files in the entry)")
            if not fp.is_file():
                raise RegistryError(f"{name} is missing")
            if fp.stat().st_size != meta.get("bytes"):
                raise RegistryError(f"{name} has {fp.stat().st_size} bytes, the card says {meta.get('bytes')} (truncated or replaced)")
            if check_hashes and sha256_file(fp) != meta.get("sha256"):
                raise RegistryError(f"{name} does not match its sha256 in the card (modified or corrupt)")
        if is_release(p.parent):
            card = _release_card(p, card, check_hashes)
        return EntryStatus(p.name, p, True, None, card)
    except RegistryError as e:
        return EntryStatus(p.name, p, False, str(e), None)


def _release_card(p: Path, card: dict[str, Any], check_hashes: bool) -> dict[str, Any]:
    """A release entry's card checked against the manifest, with the user's saved settings over it."""
    expected = read_release_manifest(p.parent).get("cards", {}).get(p.name)
    if expected is None:
        raise RegistryError(f"the entry is not listed in the release's {RELEASE_MANIFEST}")
    if check_hashes and sha256_file(p / CARD_NAME) != expected:
        raise RegistryError(f"card.json does not match its sha256 in {RELEASE_MANIFEST} (modified after the release was built)")
    return apply_overlay(p.parent, card)


def list_entries(root: str | os.PathLike | None = None, *, check_hashes: bool = True) -> list[EntryStatus]:
    """Every entry folder under the registry, newest first, broken ones included."""
    root_p = registry_root(root)
    if not root_p.is_dir():
        return []
    statuses = [
        verify_entry(d, check_hashes=check_hashes)
        for d in root_p.iterdir()
        if d.is_dir() and not d.name.startswith((".", "_"))
    ]
    return sorted(statuses, key=lambda s: ((s.card or {}).get("created_at", ""), s.id), reverse=True)


def load_entry(root: str | os.PathLike | None, entry_id: str) -> Entry:
    """Load and verify one entry; raises ``RegistryError`` with the reason if it is broken."""
    _check_name(entry_id, "entry id", _ID_RE)
    path = registry_root(root) / entry_id
    if not path.is_dir():
        raise RegistryError(f"no entry {entry_id!r} in {registry_root(root)}")
    return verify_entry(path).entry()


def usable(statuses: Iterable[EntryStatus], kind: str, task: str | None = None) -> list[EntryStatus]:
    """The verified entries of ``kind`` (and ``task``) among ``statuses``, in listing order (newest first)."""
    return [s for s in statuses if (c := s.info) and c.kind == kind and (task is None or c.task == task)]


def select(statuses: list[EntryStatus], kind: str, task: str | None = None) -> Entry | None:
    """The entry the app uses for (kind, task): the one marked default, else the newest usable."""
    usable_ = usable(statuses, kind, task)
    if not usable_:
        return None
    marked = [s for s in usable_ if s.info and s.info.default]
    return (marked or usable_)[0].entry()


