"""Sanity check: cascading model-parameter randomisation (Adebayo et al., 2018).

A map that explains the model must change when the model does: re-initialise the network from
the top down, stage by stage, and measure how far the maps move.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..archs import ARCH_SPECS, arch_spec
from ..config import InputSpec
from ..models import _unwrap
from .explainer import Explainer
from .methods import DEFAULT_METHOD
from .targets import Target

#: Top-down groups of modules re-initialised cumulatively, per architecture (each ArchSpec's ``randomisation``).
RANDOMISATION_CASCADE: dict[str, tuple[tuple[str, ...], ...]] = {name: spec.randomisation for name, spec in ARCH_SPECS.items()}


@dataclass
class RandomisationStage:
    """Spearman rank correlations between the trained model's maps and a randomised model's."""

    randomised: tuple[str, ...]  #: every module group randomised so far
    rho: np.ndarray  #: one per image
    n_empty: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.rho))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr  # deferred: scipy.stats is slow to import and only this check needs it

    # A constant (e.g. empty) map has no ranking to share: count it as uncorrelated.
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(r) if np.isfinite(r) else 0.0


def cascading_randomisation(
    model: nn.Module,
    architecture: str,
    task: str,
    spec: InputSpec,
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    target: Target = None,
    stages: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[RandomisationStage]]:
    """Adebayo et al. (2018) model-parameter randomisation test, cascading from the top.

    Returns the rank correlations of two runs of the trained model (one per image; ~1 for a
    deterministic method) and, per cumulative stage, those between the trained model's maps and
    the randomised model's. Pass ``target`` to hold the explained class fixed; None explains each
    model's own prediction. Each parameter tensor of a randomised
    module is replaced by zero-mean Gaussian noise with that tensor's own standard deviation
    (scale kept, learned structure and sign destroyed); BatchNorm running statistics are kept.
    A map that explains the model must change when the model does.
    """
    stages = stages if stages is not None else arch_spec(architecture).randomisation
    targets = [target] * len(images)
    base = Explainer(model, architecture, task, spec, method=method, classes=classes)
    trained = base.explain_batch(images, method, targets)
    # Same explainer, a second time: any nondeterminism in the method would show here.
    again = base.explain_batch(images, method, targets)
    repeat = np.array([_spearman(a.cam, b.cam) for a, b in zip(trained, again, strict=True)])

    with torch.inference_mode(False):
        net = copy.deepcopy(_unwrap(model)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    done: list[str] = []
    out: list[RandomisationStage] = []
    for group in stages:
        with torch.no_grad():
            for name in group:
                for p in net.get_submodule(name).parameters():
                    scale = p.std() if p.numel() > 1 else p.abs()
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        done.extend(group)
        ex = Explainer(net, architecture, task, spec, method=method, classes=classes)
        rand = ex.explain_batch(images, method, targets)
        rho = np.array([_spearman(a.cam, b.cam) for a, b in zip(trained, rand, strict=True)])
        out.append(RandomisationStage(tuple(done), rho, sum(e.empty for e in rand)))
    return repeat, out
