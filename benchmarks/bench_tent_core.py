"""images/s of every test-time method next to a bare forward and a minimal hand-written Tent loop.

    python benchmarks/bench_tent_core.py [--batch-size 200] [--batches 5] [--reps 5] [--device cpu]

All contenders see the same in-memory batches (real CIFAR-10 test images plus Gaussian noise
when ../shared/data is present, else uniform noise) on ResNet-20 (the real akamaster
checkpoint when present, else random weights: speed does not depend on the weights).
Repetitions are interleaved (every contender once per round) and the median time per round
is reported, with ratios computed within this one run:

* forward-only methods (source, bn_adapt, adabn, alpha_bn) against ``model(x)`` under
  ``torch.inference_mode`` with the source model in eval mode;
* tent and core against a minimal Tent loop: train-mode BN without running statistics,
  only BN affine trainable, ``loss = entropy(model(x)).mean(); backward; Adam step``.

Each method is timed as the runner drives it: ``method.forward(x)`` (inside
``inference_mode`` when the method needs no gradient) plus the runner's per-batch
``method.diverged()`` stability check.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tta.methods  # noqa: F401 - registers the methods
from tta.models import create_model, load_into
from tta.registry import METHODS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHOD_NAMES = ("source", "bn_adapt", "adabn", "alpha_bn", "tent", "core")


def make_batches(n: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], str]:
    g = torch.Generator().manual_seed(0)
    npz = SHARED / "cifar10_test_jpeg.npz"
    if npz.is_file():
        images = np.load(npz)["images"][np.random.default_rng(0).permutation(10000)[: n * size]]
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        origin = "real CIFAR-10 test images + Gaussian noise (sigma 0.1)"
    else:
        x = torch.rand(n * size, 3, 32, 32, generator=g)
        origin = "uniform noise images (../shared/data absent)"
    return [b.to(device) for b in x.split(size)], origin


def make_model(device: torch.device) -> tuple[nn.Module, str]:
    model = create_model("resnet20", 10)
    checkpoint = SHARED / "cifar10_resnet20_akamaster.th"
    if checkpoint.is_file():
        load_into(model.net, str(checkpoint))
        return model.to(device).eval(), "akamaster ResNet-20"
    return model.to(device).eval(), "ResNet-20, random weights"


def bare_forward(model: nn.Module):
    model = copy.deepcopy(model).eval()

    def step(x):
        with torch.inference_mode():
            return model(x)

    return step


def hand_written_tent(model: nn.Module):
    model = copy.deepcopy(model).train()
    model.requires_grad_(False)
    params = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            params += [m.weight, m.bias]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))

    def step(x):
        outputs = model(x)
        loss = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return outputs

    return step


def method_step(name: str, model: nn.Module):
    method = METHODS.get(name)()
    method.setup(copy.deepcopy(model))

    def step(x):
        if method.needs_grad:
            out = method.forward(x)
        else:
            with torch.inference_mode():
                out = method.forward(x)
        method.diverged()
        return out

    return step


def time_round(step, batches, device) -> float:
    start = time.perf_counter()
    for x in batches:
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    batches, origin = make_batches(args.batches, args.batch_size, device)
    model, model_origin = make_model(device)
    contenders = {"bare forward": bare_forward(model), "hand-written tent": hand_written_tent(model)}
    contenders.update({name: method_step(name, model) for name in METHOD_NAMES})
    for step in contenders.values():  # warm-up round (allocations, first-call overheads)
        time_round(step, batches[:1], device)
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.reps):
        for name, step in contenders.items():
            rounds[name].append(time_round(step, batches, device))
    n_images = args.batches * args.batch_size
    speed = {name: n_images / statistics.median(times) for name, times in rounds.items()}
    print(f"# {model_origin}; {origin}; device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch {args.batch_size} x {args.batches} batches, "
          f"median of {args.reps} interleaved rounds")
    print(f"| contender | images/s | vs bare forward | vs hand-written tent |\n|---|---:|---:|---:|")
    for name, value in speed.items():
        print(f"| {name} | {value:,.0f} | {value / speed['bare forward']:.3f} | "
              f"{value / speed['hand-written tent']:.3f} |")


if __name__ == "__main__":
    main()
