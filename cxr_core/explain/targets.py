"""Targets: which scalar of the head's output a CAM explains (pytorch-grad-cam's target callables).

The binary head is a **single logit** (sigmoid = P(PNEUMONIA)), so the library's default
(argmax over the outputs) always picks output 0, i.e. always explains PNEUMONIA, even for an
image called NORMAL. Here PNEUMONIA uses the logit and NORMAL the negated logit (the library's
``BinaryClassifierOutputTarget``); the 3-class head uses ``ClassifierOutputTarget(k)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

#: A class to explain: its index, its name, or None for the class the model predicts.
Target = int | str | None


def class_target(task: str, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score whose gradient explains class ``index`` of ``task``'s head (one sample's output)."""
    if task == "binary":
        if index not in (0, 1):
            raise ValueError(f"binary class index must be 0 (NORMAL) or 1 (PNEUMONIA), got {index}")
        # +logit for PNEUMONIA, -logit for NORMAL: the head's only output is log-odds of PNEUMONIA.
        return BinaryClassifierOutputTarget(index)
    return ClassifierOutputTarget(index)


class PredictedClassTarget:
    """Target whatever class the model predicts in this very forward pass, and remember it.

    Deciding inside the target (which the library calls on the output it already computed)
    saves the extra forward pass that choosing the class beforehand would cost.
    """

    def __init__(self, task: str, threshold: float = 0.5) -> None:
        self.task = task
        self.threshold = threshold
        self.category: int | None = None

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        out = model_output.detach().float()
        if self.task == "binary":
            self.category = int(float(torch.sigmoid(out.reshape(-1)[0])) >= self.threshold)
        else:
            self.category = int(out.argmax())
        return class_target(self.task, self.category)(model_output)
