"""What the Predict page must show for a file: ``Predictor.predict`` on the same bytes, and a check of it.

Shared by the page test (AppTest) and the browser tests: both read the shown labels ("Prediction"
metrics) and the probability bars ("class: 12.3%") and compare them with the registry's own
``Predictor`` run here on the same file, so a constant, swapped or wrong model on the page fails.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxr_core.config import DecodeLimits

#: The page shows a probability with one decimal ("12.3%"): equal "to 0.1 %" means within this.
PROB_TOLERANCE_PCT = 0.1
_BAR = re.compile(r"^\s*(?P<cls>[^:]+?):\s*(?P<pct>\d+(?:\.\d+)?)%\s*$")


def reference_prediction(registry: Path, image: Path, tta: int = 1) -> dict[str, tuple[str, dict[str, float]]]:
    """{task: (label, {class: probability in %})} from ``Predictor.predict`` on ``image``, decoded like the page."""
    from cxr_core.imaging import decode_image
    from cxr_core.predict import Predictor

    decoded = decode_image(image.read_bytes(), filename=image.name, limits=DecodeLimits())
    pred = Predictor.from_registry(str(registry)).predict(decoded.array, tta=tta)
    return {
        task: (res.label, {c: 100.0 * float(p) for c, p in res.as_dict.items()})  # shown: temperature-scaled
        for task, res in pred.results.items()
    }


def check_shown_prediction(labels: list[str], bars: list[str], ref: dict[str, tuple[str, dict[str, float]]]) -> None:
    """Assert the page's labels and probability bars are ``ref``'s (every task, every class, nothing else)."""
    assert len(labels) == len(ref), f"{len(labels)} predictions shown, {len(ref)} models in the registry: {labels}"
    shown: dict[str, float] = {}
    for text in bars:
        if (m := _BAR.match(text)) is not None:
            assert m["cls"] not in shown, f"class {m['cls']!r} shown twice: {bars}"
            shown[m["cls"]] = float(m["pct"])
    # Each model's class names are distinct (NORMAL/PNEUMONIA vs normal/bacteria/virus), so a shown
    # label or bar belongs to one model.
    for task, (label, probs) in ref.items():
        owners = [v for v in labels if v in probs]
        assert owners == [label], f"{task}: shown {labels}, Predictor.predict says {label!r} ({probs})"
        for cls, want in probs.items():
            assert cls in shown, f"{task}: no bar for {cls!r} in {bars}"
            assert abs(shown[cls] - want) <= PROB_TOLERANCE_PCT, (
                f"{task}: P({cls}) shown {shown[cls]}%, Predictor.predict says {want:.3f}%")
        total = sum(shown[c] for c in probs)
        # Each shown value is rounded to 0.1 %: their sum is within 0.05 % per class of 100 %.
        assert abs(total - 100.0) <= 0.05 * len(probs) + 1e-9, f"{task}: shown probabilities sum to {total}%"
    extra = set(shown) - {c for _, probs in ref.values() for c in probs}
    assert not extra, f"bars for classes no model has: {sorted(extra)}"
