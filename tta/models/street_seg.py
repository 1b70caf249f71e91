"""The offline segmentation benchmark's source model: a small BatchNorm encoder-decoder.

``street_seg`` maps 64 x 128 street scenes (:mod:`tta.data.street_scenes`) to per-pixel
logits at input size. ``encoder``: four conv-BN-ReLU layers (stride 4 overall, the last
dilated); ``decoder``: conv-BN-ReLU + 1x1 classifier; logits are upsampled bilinearly
to the input size. As every segmenter in tta, ``net.encoder`` is the feature extractor
(its output is what encoder-adapting methods such as CMA align) and ``net.decoder`` the head.

``builtin:street_seg`` trains it once on 2,000 ``synthetic``-style scenes (seed 0;
AdamW, one-cycle learning rate, 6 epochs, batch 32, horizontal flips) and caches the
weights under ``<cache>/weights/``; training is seeded, so every machine builds the same task.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tta.models.layers import conv_bn
from tta.models.registry import IDENTITY_MEAN, cached_weights, register_model
from tta.registry import WEIGHTS

WEIGHTS_VERSION = 1
TRAIN_EXAMPLES = 2_000
EPOCHS = 6
BATCH = 32


class StreetSeg(nn.Module):
    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.encoder = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 32, 2), conv_bn(32, 48), conv_bn(48, 48, dilation=2))
        self.decoder = nn.Sequential(conv_bn(48, 32), nn.Conv2d(32, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("street_seg", mean=IDENTITY_MEAN, std=(0.25, 0.25, 0.25))
def street_seg(num_classes: int = 7) -> StreetSeg:
    """Small BatchNorm encoder-decoder segmenter (0.05M params) for the offline street scenes."""
    return StreetSeg(num_classes)


@WEIGHTS.register("street_seg")
def street_seg_weights() -> Path:
    """Path of the trained street-scene segmenter, training and caching it on first use."""
    return cached_weights(f"street_seg-v{WEIGHTS_VERSION}.pt", train_street_seg)


def train_street_seg(seed: int = 0) -> dict[str, torch.Tensor]:
    from tta.data.street_scenes import CLASSES, generate
    from tta.models.registry import create_model

    started = time.perf_counter()
    print("training the street-scene segmenter once (about a minute; cached afterwards)", file=sys.stderr)
    torch.manual_seed(seed)
    images, labels, _ = generate(TRAIN_EXAMPLES, seed=seed, style="synthetic")
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    y_all = torch.from_numpy(labels).long()
    model = create_model("street_seg", num_classes=len(CLASSES))
    steps = EPOCHS * (len(x_all) // BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(EPOCHS):
        order = torch.from_numpy(rng.permutation(len(x_all)))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[start:start + BATCH]
            x, y = x_all[idx], y_all[idx]
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    print(f"street-scene segmenter trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return model.net.state_dict()
