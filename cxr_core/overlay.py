"""Per-user settings saved over a read-only registry (the committed release).

The release registry under ``release/`` is never written by the app: its cards are hashed in
the release manifest, and a modified card marks its entry broken. What a user tunes in the app
(today: an anomaly detector's threshold) is kept in one JSON file per user instead,
``$CXR_SETTINGS`` or ``~/.config/cxr-lens/settings.json``::

    {"version": 1, "entries": {"<entry-id>": {"threshold": 0.42, "threshold_source": {...},
                                              "saved_at": "..."}}}

and laid over the card whenever the registry reads it (``apply_overlay``), so every page sees
the saved value. Entry ids carry their build time and a random suffix, so a rebuilt release
never inherits settings made for an older one. Only the keys in ``OVERLAY_KEYS`` are honoured:
a settings file cannot change what a model is, only how the app uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Paths

OVERLAY_VERSION = 1
#: Card keys a user may override; anything else in the settings file is ignored.
OVERLAY_KEYS = ("threshold", "threshold_source")


def settings_path() -> Path:
    """The user's settings file (it need not exist yet)."""
    paths = Paths()
    return Path(os.environ.get(paths.settings_env) or paths.settings_default).expanduser()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        # A damaged settings file must not take the release down: the cards' own values stand.
        return {}
    return data if isinstance(data, dict) else {}


def entry_settings(entry_id: str) -> dict[str, Any]:
    """What the user saved for one entry (only ``OVERLAY_KEYS``, plus ``saved_at``)."""
    saved = _read(settings_path()).get("entries", {}).get(entry_id, {})
    if not isinstance(saved, dict):
        return {}
    return {k: saved[k] for k in (*OVERLAY_KEYS, "saved_at") if k in saved}


def apply_overlay(root: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """``card`` with the user's saved settings for it on top (a new dict; the file is untouched)."""
    saved = entry_settings(str(card.get("id", "")))
    if not saved:
        return card
    out = {**card, **{k: saved[k] for k in OVERLAY_KEYS if k in saved}}
    out["user_settings"] = {"path": str(settings_path()), "saved_at": saved.get("saved_at"),
                            "registry": str(Path(root)), "keys": [k for k in OVERLAY_KEYS if k in saved]}
    return out


def save_entry_settings(entry_id: str, changes: Mapping[str, Any]) -> Path:
    """Merge ``changes`` (``OVERLAY_KEYS`` only) into the user's settings for ``entry_id``; returns the file.

    Written under a lock with an atomic replace, like a card update, so two sessions saving at
    once leave a valid file.
    """
    bad = sorted(set(changes) - set(OVERLAY_KEYS))
    if bad:
        raise ValueError(f"only {', '.join(OVERLAY_KEYS)} can be saved as user settings, not {', '.join(bad)}")
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read(path)
        data["version"] = OVERLAY_VERSION
        entries = data.setdefault("entries", {})
        if not isinstance(entries, dict):
            entries = data["entries"] = {}
        current = entries.get(entry_id) if isinstance(entries.get(entry_id), dict) else {}
        entries[entry_id] = {**current, **dict(changes), "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path
