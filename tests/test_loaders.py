"""``pages.ui.loaders.registry_loader``: the page-facing call fills in the served registry and its signature."""

from __future__ import annotations

from pathlib import Path

import pages.ui.loaders as loaders


def test_registry_loader_binds_the_registry_and_fills_in_defaults(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(loaders, "registry_path", lambda: tmp_path)
    calls = []

    @loaders.registry_loader(cache=False)
    def thing(root: str, signature: tuple, a: int, b: int = 2) -> int:
        """A loader."""
        calls.append((root, signature, a, b))
        return a + b

    assert thing(1) == 3
    assert thing(1, b=5) == 6
    # Positional, defaults included: the cache key of a call does not depend on how it was spelled.
    assert calls == [(str(tmp_path), (), 1, 2), (str(tmp_path), (), 1, 5)]
    assert thing.__name__ == "thing" and thing.__doc__ == "A loader."


def test_registry_loader_caches_until_the_registry_changes(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(loaders, "registry_path", lambda: tmp_path)
    loads = []

    @loaders.registry_loader(show_spinner=False, max_entries=4)
    def heavy(root: str, signature: tuple, key: str) -> object:
        loads.append(key)
        return object()

    first = heavy("k")
    assert heavy("k") is first and heavy.cached(str(tmp_path), loaders.registry_signature(tmp_path), "k") is first
    assert loads == ["k"]
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "card.json").write_text("{}")
    assert heavy("k") is not first
    assert loads == ["k", "k"]
