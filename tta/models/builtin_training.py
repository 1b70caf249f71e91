"""The training recipes' shared loop for the built-in offline models (``smoke_cnn``, ``street_seg``).

The built-in checkpoints ship with the package (``tta/models/weights/*.pt``, sha256-checked
by :func:`tta.models.registry.packaged_weights`); nothing trains on first use. This loop is
what made them, and stays so they can be regenerated and checked:
``python benchmarks/retrain_builtin_weights.py smoke_cnn|street_seg --out FILE`` retrains one
with its recipe (``train_smoke_cnn`` / ``train_street_seg``), saves it and compares it with
the shipped file; ``tests/test_builtin_weights.py`` checks that a retrain agrees with the
shipped weights. The two recipes differ only in data, optimizer and augmentation, which the
caller passes in. Training is seeded, but its floats depend on the processor's kernels, so a
retrain elsewhere is close to, not equal to, the shipped file: :func:`state_digest` tells.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Augment = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


def train_in_memory(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, *, optimizer: torch.optim.Optimizer,
                    max_lr: float, epochs: int, batch: int, seed: int, label: str,
                    augment: Augment | None = None) -> dict[str, torch.Tensor]:
    """Cross-entropy training with a one-cycle learning rate; returns ``model.net``'s state dict.

    Each epoch visits ``default_rng(seed).permutation`` of the examples in full batches (the
    remainder is dropped); ``augment(x, y, rng)`` may transform a batch, drawing from the same
    generator, so the whole run is fixed by ``seed``.
    """
    started = time.perf_counter()
    steps = epochs * (len(x_all) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x_all)))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            x, y = x_all[idx], y_all[idx]
            if augment is not None:
                x, y = augment(x, y, rng)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    print(f"{label} trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return model.net.state_dict()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values, in key order.

    Unlike the sha256 of a ``torch.save`` file (which embeds the archive's name and a random
    serialization id), equal tensors always give the same digest: it says whether a retrain
    reproduced the shipped weights bit for bit.
    """
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
