"""The smoke benchmark's source model: a small BatchNorm CNN trained once on procedural shapes.

``builtin:smoke_cnn`` trains it on 12,000 clean images of :mod:`tta.data.synthetic`
(seed 0; SGD with Nesterov momentum, one-cycle learning rate, 6 epochs, batch 128; about
a minute on 2 CPU cores) and caches the weights under ``<cache>/weights/``; later runs
load the cached file. Training is seeded, so every machine builds the same task.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tta.models.builtin_training import train_in_memory
from tta.models.layers import conv_bn
from tta.models.registry import IDENTITY_MEAN, cached_weights, register_model
from tta.registry import WEIGHTS

WEIGHTS_VERSION = 1
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


@register_model("smoke_cnn", mean=IDENTITY_MEAN, std=(0.25, 0.25, 0.25))
def smoke_cnn(num_classes: int = 10) -> SmokeCNN:
    """Small 4-layer BatchNorm CNN (0.07M params) for the offline smoke benchmark."""
    return SmokeCNN(num_classes)


@WEIGHTS.register("smoke_cnn")
def smoke_cnn_weights() -> Path:
    """Path of the trained smoke CNN weights, training and caching them on first use."""
    return cached_weights(f"smoke_cnn-v{WEIGHTS_VERSION}.pt", train_smoke_cnn)


def train_smoke_cnn(seed: int = 0) -> dict[str, torch.Tensor]:
    from tta.data.synthetic import generate
    from tta.models.registry import create_model

    print("training the smoke benchmark's source model once (about a minute; cached afterwards)", file=sys.stderr)
    torch.manual_seed(seed)
    images, labels = generate(TRAIN_EXAMPLES, seed=seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    y_all = torch.from_numpy(labels)
    model = create_model("smoke_cnn", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return train_in_memory(model, x_all, y_all, optimizer=optimizer, max_lr=0.1, epochs=EPOCHS, batch=BATCH,
                           seed=seed, label="smoke model")
