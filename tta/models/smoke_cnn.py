"""The smoke benchmark's source model: a small BatchNorm CNN trained on procedural shapes.

``builtin:smoke_cnn`` is the file ``tta/models/weights/smoke_cnn-v1.pt`` (256 kB, sha256
``ea673781f40c6f48008d40b9a59651c9d87c54cc2d689cf1cac6ef13759c10aa``, a bare
state dict of ``model.net``), shipped with the package and checked against
:data:`WEIGHTS_SHA256` on every load; nothing is trained on first use. Float results of
CPU training depend on the processor, so only a shipped file gives every machine the same
model and the committed leaderboard's numbers.

How it was made: :func:`train_smoke_cnn` (12,000 clean images of :mod:`tta.data.synthetic`,
seed 0; SGD with Nesterov momentum, one-cycle learning rate, 6 epochs, batch 128), run once
with PyTorch 2.14.1 on an AMD EPYC CPU with 2 threads (63 s), saved with ``torch.save``.
Regenerate with ``python benchmarks/retrain_builtin_weights.py smoke_cnn --out FILE``; a new
file gets a new ``WEIGHTS_VERSION`` and hash (torch.save embeds a random serialization id,
so even identical tensors give a new sha256), and the committed leaderboard must be rebuilt.
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
WEIGHTS_FILE = f"smoke_cnn-v{WEIGHTS_VERSION}.pt"
WEIGHTS_SHA256 = "ea673781f40c6f48008d40b9a59651c9d87c54cc2d689cf1cac6ef13759c10aa"
TRAIN_EXAMPLES = 12_000
EPOCHS = 6
BATCH = 128


class SmokeCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, 1), conv_bn(16, 32, 2), conv_bn(32, 64, 2), conv_bn(64, 64, 1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@register_model("smoke_cnn", mean=IDENTITY_MEAN, std=(0.25, 0.25, 0.25), head="fc")
def smoke_cnn(num_classes: int = 10) -> SmokeCNN:
    """Small 4-layer BatchNorm CNN (0.07M params) for the offline smoke benchmark."""
    return SmokeCNN(num_classes)


@WEIGHTS.register("smoke_cnn")
def smoke_cnn_weights() -> Path:
    """Path of the shipped smoke CNN weights, after checking their sha256."""
    return packaged_weights(WEIGHTS_FILE, WEIGHTS_SHA256)


def train_smoke_cnn(seed: int = 0) -> dict[str, torch.Tensor]:
    """The recipe that made the shipped weights; returns ``model.net``'s state dict (about a minute)."""
    from tta.data.synthetic import generate
    from tta.models.registry import create_model

    print("training the smoke benchmark's source model (about a minute on 2 CPU cores)", file=sys.stderr)
    torch.manual_seed(seed)
    images, labels = generate(TRAIN_EXAMPLES, seed=seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    y_all = torch.from_numpy(labels)
    model = create_model("smoke_cnn", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return train_in_memory(model, x_all, y_all, optimizer=optimizer, max_lr=0.1, epochs=EPOCHS, batch=BATCH,
                           seed=seed, label="smoke model")
