"""Build the demo registry from synthetic phantoms, on CPU, in a few minutes.

    python -m train.demo            # build into $CXR_REGISTRY or ./registry
    python -m train.demo --if-missing   # do nothing when a usable classifier exists

Generates the synthetic Kaggle-layout set (``<registry>/_synthetic``), trains the binary and
3-class classifiers on it, indexes them and fits the anomaly detectors and the chest X-ray
guard (``cxr_core.demo``). The UI labels every entry built here as synthetic demo data.
"""

from __future__ import annotations

import argparse
import sys

from cxr_core.demo import DemoConfig, build_demo, has_usable_classifier
from cxr_core.registry import registry_root

from ._cli import tqdm_progress


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--if-missing", action="store_true", help="skip when the registry already has a usable classifier")
    p.add_argument("--epochs", type=int, default=DemoConfig.epochs)
    ns = p.parse_args(argv)
    root = registry_root(ns.out)
    if ns.if_missing and has_usable_classifier(root):
        print(f"registry {root} already has a classifier; not rebuilding the demo")
        return 0
    progress, close = tqdm_progress()
    try:
        build_demo(root, DemoConfig(epochs=ns.epochs), progress)
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
