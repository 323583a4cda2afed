"""The app's pages in navigation order and their URL paths (used by app.py, the browser tests and benches)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def page_files(repo: Path = REPO) -> list[Path]:
    """``pages/*.py`` in navigation order (by number prefix); ``pages/ui`` is a package, not pages."""
    return sorted((p for p in (repo / "pages").glob("*.py") if not p.name.startswith("_")),
                  key=lambda p: (int(m.group(1)) if (m := re.match(r"(\d+)_", p.name)) else 10**6, p.name))


def url_path(page: Path) -> str:
    """A page's URL path: its file name without the number prefix and extension."""
    return re.sub(r"^\d+_", "", page.stem)
