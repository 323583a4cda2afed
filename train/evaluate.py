"""Evaluate a registered classifier on a dataset split and store the figures in its card.

    python -m train.evaluate ENTRY --data ../shared/data/kermany-224 --split test --tta 4

ENTRY is an entry id in the registry (``--root``, default $CXR_REGISTRY or ./registry) or
the path of an entry folder. Prints accuracy, precision, recall/sensitivity, specificity,
F1, AUROC, per-class accuracy, the confusion matrix and the expected calibration error,
plain and with TTA (and, for the binary task, at the thresholds the card chose on
validation), and stores them in the card under ``metrics["eval:<split>..."]`` plus a
line in the card's ``evaluations``. The validation split is re-made exactly as training
made it (same fraction and seed, by patient). A dataset whose fingerprint differs from
the one the card was trained on is evaluated, with a warning.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_core.cards import MetricKey
from cxr_core.data import DatasetError, load_images
from cxr_core.inference import load_classifier, pick_device
from cxr_core.models import logits_to_probs
from cxr_core.preprocess import TTA_VIEWS, normalize, prepare, to_float, tta_views
from cxr_core.registry import Entry, RegistryError, load_entry, registry_root, update_info, verify_entry
from cxr_core.training import report_metrics


@dataclass
class EvalResult:
    """What one evaluation measured; ``metrics`` keys are the card keys (``eval:test``, ``eval:test_tta4``, ...)."""

    entry_id: str
    split: str
    tta: int
    n: int
    metrics: dict[str, dict[str, Any]]
    fingerprint_matches: bool
    data: str
    device: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "split": self.split, "tta": self.tta, "n": self.n, "data": self.data, "device": self.device,
            "fingerprint_matches": self.fingerprint_matches, "seconds": self.seconds, "keys": list(self.metrics),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def resolve_entry(ref: str, root: str | None = None) -> Entry:
    """An entry from its id in the registry or from the path of its folder; raises ``RegistryError``."""
    p = Path(ref)
    if p.is_dir() and (p / "card.json").is_file():
        return verify_entry(p).entry()
    return load_entry(root, ref)


@torch.inference_mode()
def view_probs(
    model: torch.nn.Module, images_u8: np.ndarray, spec, task: str, n_views: int, device: torch.device,
    batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Probabilities per TTA view, (n_views, N, n_classes): plain = [0], TTA-n = mean of [:n].

    One pass serves both the plain and the TTA figures, where calling ``infer`` twice would
    run the plain view twice.
    """
    data = torch.as_tensor(np.ascontiguousarray(images_u8))
    out = []
    for start in range(0, len(data), batch_size):
        x01 = to_float(data[start : start + batch_size].to(device))
        per_view = [
            logits_to_probs(model(normalize(v, spec).contiguous(memory_format=torch.channels_last)).float(), task).cpu()
            for v in tta_views(x01, n_views)
        ]
        out.append(torch.stack(per_view))
        if progress:
            progress(min(start + batch_size, len(data)), len(data))
    return torch.cat(out, dim=1).numpy()


def evaluate_entry(
    entry: Entry,
    data: str | None = None,
    split: str = "test",
    tta: int = 4,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Evaluate ``entry`` on ``split`` of ``data`` (default: the dataset its card names)."""
    t0 = time.perf_counter()
    card = entry.classifier_card
    if not 1 <= tta <= len(TTA_VIEWS):
        raise ValueError(f"--tta must be between 1 and {len(TTA_VIEWS)}")
    root = data or card.dataset.root
    if not root:
        raise DatasetError("the card names no dataset root: pass --data")
    dataset = card.dataset.load(root, card.task)
    warnings: list[str] = []
    fp = dataset.fingerprint()
    matches = fp == card.dataset.fingerprint
    if not matches:
        warnings.append(
            f"dataset fingerprint {fp[:12]}… differs from the one {entry.id} was trained on "
            f"({str(card.dataset.fingerprint)[:12]}…): files were added, removed or replaced, or this is another dataset"
        )
    samples = dataset.split(split)
    if not samples:
        raise DatasetError(f"{root} has no {split!r} images")
    dev = pick_device(device)
    clf = load_classifier(entry, device=str(dev))
    images = load_images(dataset, samples, lambda g: prepare(g, clf.spec),
                         progress=(lambda i, n: progress(f"decode {split}", i, n)) if progress else None)
    y = np.array([s.target(clf.task) for s in samples])
    per_view = view_probs(clf.model, images, clf.spec, clf.task, tta, dev,
                          progress=(lambda i, n: progress(f"infer {split}", i, n)) if progress else None)
    thresholds = card.thresholds
    metrics: dict[str, dict[str, Any]] = {}
    for t in sorted({1, tta}):
        probs = per_view[:t].mean(axis=0)
        key = MetricKey(split, tta=t, source="evaluate")
        metrics[str(key)] = report_metrics(clf.task, y, probs, clf.classes)
        if clf.task == "binary":
            name = "youden_val" if t == 1 else f"youden_val_tta{t}"
            thr = thresholds.get(name, thresholds.get("youden_val"))
            if thr is not None:
                metrics[str(key.with_(threshold="youden_val"))] = report_metrics(clf.task, y, probs, clf.classes, float(thr))
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return EvalResult(entry.id, split, tta, len(samples), metrics, matches, str(Path(root).resolve()), device_name,
                      time.perf_counter() - t0, warnings)


def store(entry: Entry, result: EvalResult) -> None:
    """Write the figures into the card (locked, atomic)."""

    metrics = {MetricKey.parse(k): v for k, v in result.metrics.items()}
    update_info(entry, lambda _: entry.classifier_card.with_evaluation(metrics, result.record()))


def _f(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def format_report(metrics: dict[str, Any], classes: list[str]) -> str:
    """Human-readable block for one metrics dict."""
    binary = "sensitivity" in metrics and "auroc" in metrics
    rows = [("accuracy", metrics.get("accuracy"))]
    if binary:
        rows += [("precision", metrics.get("precision")), ("recall/sensitivity", metrics.get("sensitivity")),
                 ("specificity", metrics.get("specificity")), ("F1", metrics.get("f1")), ("AUROC", metrics.get("auroc")),
                 ("threshold", metrics.get("threshold"))]
    else:
        rows += [("precision (macro)", metrics.get("precision_macro")), ("recall (macro)", metrics.get("recall_macro")),
                 ("specificity (macro)", metrics.get("specificity_macro")), ("F1 (macro)", metrics.get("f1_macro")),
                 ("AUROC (one-vs-rest)", metrics.get("auroc_ovr"))]
        ab = metrics.get("as_binary") or {}
        rows += [("as normal-vs-pneumonia: acc", ab.get("accuracy")), ("  sensitivity", ab.get("sensitivity")),
                 ("  specificity", ab.get("specificity")), ("  AUROC", ab.get("auroc"))]
    rows.append(("ECE", metrics.get("ece")))
    lines = [f"    {k:<28}{_f(v)}" for k, v in rows]
    pca = metrics.get("per_class_accuracy") or {}
    lines.append("    per-class accuracy          " + "  ".join(f"{c} {_f(v)}" for c, v in pca.items()))
    cm = metrics.get("confusion") or []
    names = classes if len(cm) == len(classes) else [str(i) for i in range(len(cm))]
    width = max([len(c) for c in names] + [6])
    lines.append("    confusion (rows true, cols predicted)")
    lines.append("      " + " " * width + "".join(f"{c:>{width + 2}}" for c in names))
    for c, row in zip(names, cm, strict=False):
        lines.append(f"      {c:<{width}}" + "".join(f"{v:>{width + 2}}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ._cli import tqdm_progress

    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entry", help="entry id in the registry, or the path of an entry folder")
    p.add_argument("--data", default=None, help="dataset root (default: the one the card names)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--tta", type=int, default=4, help=f"test-time views (1..{len(TTA_VIEWS)}); plain results are always reported")
    p.add_argument("--root", default=None, help="registry root (default $CXR_REGISTRY or ./registry)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-store", action="store_true", help="print only; leave the card unchanged")
    ns = p.parse_args(argv)
    progress, close = tqdm_progress()
    try:
        entry = resolve_entry(ns.entry, ns.root)
        result = evaluate_entry(entry, ns.data, ns.split, ns.tta, ns.device, progress)
    except (RegistryError, DatasetError, ValueError, FileNotFoundError) as e:
        close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{entry.id} · {entry.task} · {result.split} split of {result.data} · n={result.n} · "
          f"{result.device} · {result.seconds:.1f}s")
    if ns.root is None and not Path(ns.entry).is_dir():
        print(f"registry: {registry_root(None)}")
    for key, m in result.metrics.items():
        print(f"\n  {key}")
        print(format_report(m, entry.classes))
    if not ns.no_store:
        store(entry, result)
        print(f"\nstored {len(result.metrics)} metric sets in {entry.path / 'card.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
