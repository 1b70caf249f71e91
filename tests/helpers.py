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
