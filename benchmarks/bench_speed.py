"""What the harness costs: each method's images/s next to a bare ``model(x)`` loop.

    python benchmarks/bench_speed.py                      # ResNet-20, CPU, batch 200 and 16
    python benchmarks/bench_speed.py --model wrn28_10 --device cuda
    python benchmarks/bench_speed.py --stream-all         # + wall time of all 15 CIFAR-10-C corruptions
    python benchmarks/bench_speed.py --compile            # every loop's model under torch.compile

Protocol of measurement: the same in-memory float batches for every loop; within each
repetition the loops take turns batch by batch (the order rotating), so a slow spell of
the machine hits all of them alike; the ratio of a repetition is method images/s / bare
images/s, and the table gives medians over repetitions. Forward-only methods are
compared with ``model(x)`` under ``torch.inference_mode``; ``bn_adapt`` also with the
minimal hand-written test-statistics model (every BatchNorm in training mode without
running statistics: PyTorch's own kernel, the floor for any method that computes batch
statistics); ``tent`` and ``core`` also with a
minimal hand-written Tent loop (train-mode BN, entropy, backward, Adam step on the BN
affine parameters), and ``core`` with a minimal hand-written Core loop (mixed statistics
by ``var_mean`` + ``lerp``, the MCC loss, backward, Adam step). Peak memory: on GPU, CUDA ``max_memory_allocated`` above the memory allocated before
the method runs (model, data); on CPU the peak
resident set while the method runs above the resident set before it (Linux VmHWM, reset
after loading), in a fresh subprocess per method so methods do not hide each other's peaks.
With ``--compile`` every model (bare, the method's, the hand-written ones) goes through
``torch.compile`` as ``tta.run --compile`` does it, and is compiled during the warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tta.environment import resolve_device
from tta.errors import UserError
from tta.models import create_model, load_into
from tta.registry import METHODS
from tta.streams import to_tensor

import tta.methods  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FORWARD_ONLY = ("source", "bn_adapt", "adabn", "alpha_bn")
GRADIENT = ("tent", "core")
#: "runner": batches exactly as tta.streams makes them (channels-last); "nchw": contiguous copies
LAYOUTS = {"runner": lambda batch: batch, "nchw": lambda batch: batch.contiguous()}


def load_batches(batch_size: int, n_images: int, device: str, layout: str = "runner") -> list[torch.Tensor]:
    npz = SHARED / "cifar10_test_jpeg.npz"
    if npz.is_file():
        images = np.load(npz)["images"]
    else:
        from tta.data.synthetic import generate

        images = generate(n_images, seed=1)[0]
    images = images[np.random.default_rng(0).permutation(len(images))[:n_images]]
    return [LAYOUTS[layout](to_tensor(images[i:i + batch_size], device)) for i in range(0, len(images), batch_size)]


def build_model(name: str, device: str):
    model = create_model(name, 10)
    checkpoint = SHARED / "cifar10_resnet20_akamaster.th"
    if name == "resnet20" and checkpoint.is_file():
        load_into(model.net, str(checkpoint))
    return model.to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_speeds(loops: dict, batches, device) -> dict[str, float]:
    """Images/s of each loop, the loops taking turns batch by batch in a rotating order."""
    seconds = dict.fromkeys(loops, 0.0)
    keys = list(loops)
    for i, x in enumerate(batches):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            sync(device)
            start = time.perf_counter()
            loops[key]([x])
            sync(device)
            seconds[key] += time.perf_counter() - start
    images = sum(len(b) for b in batches)
    return {key: images / s for key, s in seconds.items()}


def bare_loop(model):
    def loop(batches):
        with torch.inference_mode():
            for x in batches:
                model(x)
    return loop


def method_loop(method):
    """The method as the runner drives it: forward (inference mode unless it needs gradients)
    plus the runner's per-batch stability check."""
    def loop(batches):
        context = torch.enable_grad if method.needs_grad else torch.inference_mode
        for x in batches:
            with context():
                method(x)
            method.diverged()
    return loop


def hand_bn_adapt_loop(model, wrap=lambda m: m):
    """The minimal test-statistics model: BatchNorm in training mode without running statistics."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
            module.track_running_stats = False
            module.running_mean = module.running_var = None
    return bare_loop(wrap(model))


def hand_tent_loop(model, wrap=lambda m: m, lr: float = 1e-3):
    """The minimal Tent: train-mode BN without running stats, entropy, backward, Adam on BN affine."""
    def use_batch_statistics(bn):
        bn.train()
        bn.track_running_stats = False
        bn.running_mean = bn.running_var = None

    def entropy(logits):
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()

    return hand_loop(model, use_batch_statistics, entropy, lr, wrap)


def hand_loop(model, prepare_bn, loss_of, lr: float, wrap):
    """``prepare_bn(bn)`` on every BatchNorm2d, then per batch: forward of ``wrap(model)``,
    ``loss_of(logits)``, backward, Adam step on the BN affine parameters only (Tent's setting)."""
    model.requires_grad_(False)
    params = []
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            prepare_bn(module)
            module.weight.requires_grad_(True)
            module.bias.requires_grad_(True)
            params += [module.weight, module.bias]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    net = wrap(model)

    def loop(batches):
        for x in batches:
            loss = loss_of(net(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loop


def hand_core_loop(model, wrap=lambda m: m, alpha: float = 0.1, temperature: float = 2.5, lr: float = 1e-3):
    """The minimal Core: every BN normalizes with ``lerp(source, batch, 1 - alpha)`` statistics
    (gradients through the batch part), the MCC class-confusion loss, backward, Adam on BN affine."""
    def mix_statistics(bn):
        def forward(x):
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            mean = torch.lerp(bn.running_mean, mean, 1 - alpha)
            var = torch.lerp(bn.running_var, var, 1 - alpha)
            scale = bn.weight * torch.rsqrt(var + bn.eps)
            return x * scale.view(1, -1, 1, 1) + (bn.bias - mean * scale).view(1, -1, 1, 1)
        bn.forward = forward

    def class_confusion(logits):
        probs = (logits / temperature).softmax(1)
        with torch.no_grad():
            weight = 1 + torch.exp((probs * probs.clamp_min(1e-12).log()).sum(1))
            weight = len(probs) * weight / weight.sum()
        confusion = (probs * weight[:, None]).t() @ probs
        confusion = confusion / confusion.sum(0, keepdim=True)
        return (confusion.sum() - confusion.trace()) / probs.shape[1]

    return hand_loop(model, mix_statistics, class_confusion, lr, wrap)


#: the hand-written loop each method is compared with (tent's also serves core)
HAND_LOOPS = {"bn_adapt": hand_bn_adapt_loop, "tent": hand_tent_loop, "core": hand_core_loop}


def model_wrapper(args):
    """``torch.compile`` under ``--compile``, else the model itself."""
    return torch.compile if args.compile else (lambda model: model)


def throughput_table(args) -> list[dict]:
    rows = []
    wrap = model_wrapper(args)
    methods = [m for m in (args.methods or (*FORWARD_ONLY, *GRADIENT)) if m in METHODS]
    for batch_size in args.batch_sizes:
        batches = load_batches(batch_size, args.n_images, args.device, args.layout)
        for name in methods:
            bare_model = wrap(build_model(args.model, args.device))
            method = METHODS.get(name)()
            method.setup(build_model(args.model, args.device))
            method.model = wrap(method.model)  # as tta.runner does under --compile
            loops = {"bare": bare_loop(bare_model), "method": method_loop(method)}
            hands = [h for h in (name, "tent" if name in GRADIENT else None) if h in HAND_LOOPS]
            for hand in dict.fromkeys(hands):
                loops[f"hand_{hand}"] = HAND_LOOPS[hand](build_model(args.model, args.device), wrap)
            for loop in loops.values():  # warm-up
                loop(batches[:2])
            speeds = {k: [] for k in loops}
            for _ in range(args.repeats):
                for key, speed in interleaved_speeds(loops, batches, args.device).items():
                    speeds[key].append(speed)
                method.reset()
            row = {"model": args.model, "device": args.device, "compiled": args.compile, "batch": batch_size, "method": name,
                   "images_per_s": statistics.median(speeds["method"]),
                   "bare_images_per_s": statistics.median(speeds["bare"]),
                   "ratio_vs_bare": statistics.median(m / b for m, b in zip(speeds["method"], speeds["bare"]))}
            for hand in dict.fromkeys(hands):
                row[f"hand_{hand}_images_per_s"] = statistics.median(speeds[f"hand_{hand}"])
                row[f"ratio_vs_hand_{hand}"] = statistics.median(
                    m / h for m, h in zip(speeds["method"], speeds[f"hand_{hand}"]))
            row["peak_mem_mb"] = peak_memory(args, name, batch_size)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def peak_memory(args, method: str, batch_size: int) -> float:
    if args.device.startswith("cuda"):  # peak allocated above what is resident before the method runs
        model = build_model(args.model, args.device)
        m = METHODS.get(method)()
        m.setup(model)
        batches = load_batches(batch_size, 4 * batch_size, args.device, args.layout)
        if args.compile:  # compile first: the compiler's memory is not the method's
            m.model = torch.compile(m.model)
            method_loop(m)(batches[:1])
            m.reset()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        method_loop(m)(batches)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    out = subprocess.run([sys.executable, __file__, "--child-memory", method, "--model", args.model,
                          "--batch-sizes", str(batch_size), "--layout", args.layout] + ["--compile"] * args.compile,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(args) -> None:
    """In a fresh process: peak resident memory (MiB) above the resident size before the method runs.

    Linux's peak-RSS mark (VmHWM) is reset through ``/proc/self/clear_refs`` after the data and
    model are loaded, so the loading itself does not hide the method's peak.
    """
    model = build_model(args.model, "cpu")
    batches = load_batches(args.batch_sizes[0], 4 * args.batch_sizes[0], "cpu", args.layout)
    method = METHODS.get(args.child_memory)()
    method.setup(model)
    if args.compile:  # compile first: the compiler's memory is not the method's
        method.model = torch.compile(method.model)
        method_loop(method)(batches[:1])
        method.reset()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    method_loop(method)(batches)
    print((_status_kib("VmHWM") - before) / 1024)


def stream_all(args) -> dict:
    """Wall time of bn_adapt through all 15 corruptions at severity 5, data loading included."""
    from tta.runner import Run, RunConfig

    if not args.data_root:
        raise SystemExit("--stream-all needs --data-root DIR holding DIR/CIFAR-10-C/<corruption>.npy + labels.npy "
                         "(python -m tta.data.make_c --dataset cifar10 --out DIR/CIFAR-10-C, or "
                         "python benchmarks/make_leaderboard.py --build-only)")
    start = time.perf_counter()
    run = Run(RunConfig(protocol="cifar10c", method="bn_adapt", data_root=args.data_root, severity=5,
                        checkpoint=str(SHARED / "cifar10_resnet20_akamaster.th"),
                        domains=None if not args.domains else args.domains.split(",")))
    rows = run.execute(store=None)
    wall = time.perf_counter() - start
    return {"domains": len(rows), "images": sum(r["n"] for r in rows), "wall_s": wall,
            "mean_error": statistics.mean(r["error"] for r in rows),
            "method_s": sum(r["method_s"] for r in rows)}


def markdown(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[200, 16])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", type=lambda s: s.split(","), help="comma-separated subset (default: all six)")
    p.add_argument("--stream-all", action="store_true")
    p.add_argument("--data-root")
    p.add_argument("--domains")
    p.add_argument("--threads", type=int)
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="runner",
                   help="batch memory layout: as the runner streams it (channels-last) or contiguous NCHW")
    p.add_argument("--compile", action="store_true", help="torch.compile every loop's model (as tta.run --compile)")
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        resolve_device(args.device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        child_memory(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    if args.stream_all:
        print(json.dumps(stream_all(args)), flush=True)
        return
    print(markdown(throughput_table(args)))


if __name__ == "__main__":
    main()
