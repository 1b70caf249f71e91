"""Small helpers for tests: run the CLI in a subprocess, build a method on the real ResNet-20."""

from __future__ import annotations

import os
import subprocess
import sys

from tta.models import create_model, load_into


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def resnet20(checkpoint: str):
    model = create_model("resnet20", num_classes=10)
    load_into(model.net, checkpoint)
    return model.eval()


def random_resnet20(seed: int = 0):
    """A ResNet-20 with random weights and non-trivial BN statistics and affine parameters."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = create_model("resnet20", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


def fake_distribution(tmp_path, monkeypatch, name: str, group: str, entry: str) -> None:
    """Put a distribution ``name`` declaring ``entry`` (``key = module:obj``) in entry-point
    ``group`` on ``sys.path``, as an installed plugin package would be."""
    dist = tmp_path / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
