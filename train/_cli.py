"""Small helpers shared by the training scripts: progress bars and summaries."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm


def tqdm_progress() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A ``progress(stage, done, total)`` callback drawing one tqdm bar per stage, and a closer."""
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def fmt_metrics(m: dict) -> str:
    keys = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auroc", "auroc_ovr", "ece")
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if isinstance(m.get(k), float))
