"""What a result row records about the software and machine that produced it."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache

import numpy as np
import torch

import tta
from tta.errors import UserError
from tta.paths import CHECKOUT_ROOT


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) -> a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    return device


#: tracked outputs, not inputs: results written there do not make the code that wrote them dirty
RESULTS_FOLDER = "leaderboard"


@lru_cache(maxsize=1)
def git_revision() -> str:
    """``<sha>`` of the checkout, ``+dirty`` when tracked files other than the committed results
    (``leaderboard/``, which a run may be writing into) differ; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(CHECKOUT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(CHECKOUT_ROOT), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", f":(exclude){RESULTS_FOLDER}"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def describe(device: torch.device) -> dict[str, object]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "tta": tta.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "os": f"{platform.system()} {platform.release()}",
        "host": platform.node(),
    }
