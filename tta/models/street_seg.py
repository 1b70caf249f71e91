"""The offline segmentation benchmark's source model: a small BatchNorm encoder-decoder.

``street_seg`` maps 64 x 128 street scenes (:mod:`tta.data.street_scenes`) to per-pixel
logits at input size. ``encoder``: four conv-BN-ReLU layers (stride 4 overall, the last
dilated); ``decoder``: conv-BN-ReLU + 1x1 classifier; logits are upsampled bilinearly
to the input size. As every segmenter in tta, ``net.encoder`` is the feature extractor
(its output is what encoder-adapting methods such as CMA align) and ``net.decoder`` the head.

``builtin:street_seg`` is the file ``tta/models/weights/street_seg-v1.pt`` (228 kB, sha256
``368f12ca8f06cf2570386eae5a1919f48681aacd3935edf5c122521ffea65fd4``, a bare
state dict of ``model.net``), shipped with the package and checked against
:data:`WEIGHTS_SHA256` on every load; nothing is trained on first use (CPU training results
depend on the processor, so only a shipped file gives every machine the same model).

How it was made: :func:`train_street_seg` (2,000 ``synthetic``-style scenes, seed 0; AdamW,
one-cycle learning rate, 6 epochs, batch 32, horizontal flips), run once with PyTorch
2.14.1 on an AMD EPYC CPU with 2 threads (33 s), saved with ``torch.save``. Regenerate with
``python benchmarks/retrain_builtin_weights.py street_seg --out FILE``; a new file gets a
new ``WEIGHTS_VERSION`` and hash, and stored results of ``streets_smoke`` change with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tta.models.builtin_training import train_in_memory
from tta.models.layers import conv_bn
from tta.models.registry import IDENTITY_MEAN, packaged_weights, register_model
from tta.registry import WEIGHTS

WEIGHTS_VERSION = 1
WEIGHTS_FILE = f"street_seg-v{WEIGHTS_VERSION}.pt"
WEIGHTS_SHA256 = "368f12ca8f06cf2570386eae5a1919f48681aacd3935edf5c122521ffea65fd4"
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
    """Path of the shipped street-scene segmenter weights, after checking their sha256."""
    return packaged_weights(WEIGHTS_FILE, WEIGHTS_SHA256)


def train_street_seg(seed: int = 0) -> dict[str, torch.Tensor]:
    """The recipe that made the shipped weights; returns ``model.net``'s state dict (about 35 s)."""
    from tta.data.street_scenes import CLASSES, generate
    from tta.models.registry import create_model

    print("training the street-scene segmenter (about 35 s on 2 CPU cores)", file=sys.stderr)
    torch.manual_seed(seed)
    images, labels, _ = generate(TRAIN_EXAMPLES, seed=seed, style="synthetic")
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    y_all = torch.from_numpy(labels).long()
    model = create_model("street_seg", num_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    return train_in_memory(model, x_all, y_all, optimizer=optimizer, max_lr=5e-3, epochs=EPOCHS, batch=BATCH,
                           seed=seed, label="street-scene segmenter", augment=_random_flip)


def _random_flip(x: torch.Tensor, y: torch.Tensor, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of image and label map together, with probability 1/2 per batch."""
    return (x.flip(-1), y.flip(-1)) if rng.random() < 0.5 else (x, y)
