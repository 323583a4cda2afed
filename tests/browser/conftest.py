"""Browser-test fixtures: registries built in the test, a running ``streamlit run app.py`` per registry, chromium.

Two apps: ``demo_app`` on a reduced synthetic demo registry (always), and ``mini_app`` on models
trained briefly on ``../shared/data/cxr-mini`` (skipped when that data is absent). Every test here
skips with the reason when Debian's chromium (``/usr/bin/chromium``) or playwright is missing; in CI
these skips are failures (``tests.conftest.missing_dependency``). The registries are built with
the real anomaly and index builders: a module that fails to import fails the tests, it is never
left out.

For quick iterations, ``CXR_TEST_DEMO_REGISTRY`` / ``CXR_TEST_MINI_REGISTRY`` name registries built
earlier with the same recipe; the fixtures then work on a copy instead of building.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.browser import StreamlitServer, chromium, chromium_missing_reason, new_context
from tests.conftest import missing_dependency


def _playwright_missing_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the playwright Python package is not installed ({exc})"
    return None


class _NoPlaywright(pytest.File):
    """Stands in for a browser test module that cannot be imported without playwright: one test that
    skips with the reason (fails in CI) instead of a collection error."""

    def collect(self):
        yield _NoPlaywrightItem.from_parent(self, name="playwright")


class _NoPlaywrightItem(pytest.Item):
    def runtest(self) -> None:
        missing_dependency(_playwright_missing_reason() or "playwright")

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: playwright missing"


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name.startswith("test_") and _playwright_missing_reason():
        return _NoPlaywright.from_parent(parent, path=module_path)
    return None


def _log(msg: str) -> None:
    if os.environ.get("CXR_TEST_VERBOSE"):
        print(msg)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    reason = chromium_missing_reason()
    if reason:
        missing_dependency(reason)
    with chromium() as b:
        yield b


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request, tmp_path) -> Iterator:
    ctx = new_context(browser)
    pg = ctx.new_page()
    yield pg
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        try:
            pg.screenshot(path=str(shot))
            print(f"screenshot of the failing page: {shot}")
        except Exception as e:  # a dead page must not hide the test's own failure
            print(f"no screenshot: {e}")
    ctx.close()


def add_demo_steps(root: Path, data: Path, log=_log) -> Path:
    """Turn a registry of classifiers trained on synthetic data into a small demo registry.

    Marks the classifiers as synthetic demo entries, then runs what the demo build adds: the
    anomaly detectors (``cxr_core.demo.detector_step``) and an embedding index per classifier
    (``cxr_core.reference.build_index``, with the t-SNE 2-D map only: the other maps cost minutes on a
    shared 2-core CPU and the explorer tests need one 2-D map).
    """
    from cxr_core.demo import detector_step as anomaly_step
    from cxr_core.reference import IndexConfig, build_index
    from cxr_core.registry import list_entries, load_entry, update_card

    classifiers = [load_entry(root, s.id) for s in list_entries(root) if s.ok and s.card.get("kind") == "classifier"]
    for entry in classifiers:
        update_card(entry, lambda c: c["dataset"].update({"synthetic": True, "name": "synthetic-demo"}))
    anomaly_step(root, data, classifiers, None, log)
    for entry in classifiers:
        build_index(load_entry(root, entry.id), data, IndexConfig(device="cpu", projections=("tsne_2d",)), log=log)
    return root


def build_mini_registry(root: Path, data: Path, max_per_split: int = 40) -> Path:
    """Classifiers trained briefly on real cxr-mini images, the anomaly detectors and an index per classifier."""
    from cxr_core.anomaly import AEConfig, FeatureConfig
    from cxr_core.detector_training import AnomalyConfig, run
    from cxr_core.reference import IndexConfig, build_index
    from cxr_core.registry import list_entries
    from cxr_core.training import TrainConfig, train_classifier

    for task in ("binary", "multiclass"):
        train_classifier(
            TrainConfig(data=str(data), task=task, out=str(root), size=96, epochs=1, batch_size=32, tta=1,
                        device="cpu", patience=1, lr=1e-3, max_per_split=max_per_split),
            log=_log,
        )
    run(AnomalyConfig(data=str(data), out=str(root), detector="all", max_per_split=max_per_split,
                      ae=AEConfig(size=64, epochs=2, batch_size=16, widths=(16, 32, 64, 128), latent=16),
                      features=FeatureConfig(size=96), ood_max_train=2 * max_per_split), log=_log)
    for s in list_entries(root):
        if s.ok and s.card.get("kind") == "classifier":
            build_index(s.entry(), data, IndexConfig(device="cpu", max_per_split=max_per_split,
                                                    projections=("tsne_2d",)), log=_log)
    return root


@pytest.fixture(scope="session")
def demo_registry(request, tmp_path_factory) -> Path:
    """The demo build on a small scale: tiny_registry's classifiers (shared with the page tests) + demo steps."""
    import shutil

    if reason := chromium_missing_reason():
        missing_dependency(reason)
    root = tmp_path_factory.mktemp("browser-demo") / "registry"
    prebuilt = os.environ.get("CXR_TEST_DEMO_REGISTRY")
    if prebuilt:  # development shortcut: a copy of a registry built earlier by this fixture's recipe
        shutil.copytree(prebuilt, root)
        return root
    shutil.copytree(request.getfixturevalue("tiny_registry"), root)
    return add_demo_steps(root, request.getfixturevalue("synthetic_data"))


@pytest.fixture(scope="session")
def demo_app(demo_registry: Path) -> Iterator[StreamlitServer]:
    with StreamlitServer(demo_registry) as srv:
        yield srv


@pytest.fixture(scope="session")
def mini_registry(tmp_path_factory, cxr_mini: Path) -> Path:
    import shutil

    if reason := chromium_missing_reason():
        missing_dependency(reason)
    root = tmp_path_factory.mktemp("browser-mini") / "registry"
    prebuilt = os.environ.get("CXR_TEST_MINI_REGISTRY")
    if prebuilt:  # development shortcut, as for the demo registry
        shutil.copytree(prebuilt, root)
        return root
    return build_mini_registry(root, cxr_mini)


@pytest.fixture(scope="session")
def mini_app(mini_registry: Path) -> Iterator[StreamlitServer]:
    with StreamlitServer(mini_registry) as srv:
        yield srv
