"""The four-stage conv net CXR Lens offers as its cheap, random-init baseline."""

from __future__ import annotations

import torch
from torch import nn

#: Inputs are scaled to [-1, 1]: the baseline has no pretrained statistics to follow.
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)


class SmallCNN(nn.Module):
    """A four-stage conv net: the cheap baseline, random init only.

    It mirrors the parts of timm's model interface that CXR Lens uses so callers treat it
    like any timm backbone.
    """

    def __init__(self, num_classes: int, drop_rate: float = 0.2, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        stages: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            # No pooling after the last stage: its output is the map Grad-CAM explains.
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*stages)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {
            "input_size": (3, 224, 224),
            "mean": HALF,
            "std": HALF,
            "classifier": "classifier",
            "first_conv": "features.0.0",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
