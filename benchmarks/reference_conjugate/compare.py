"""Side by side: tta's ``conjugate_pl`` against the authors' code (locuslab/tta_conjugate).

MD has no conjugate pseudo-labels, so the reference is the authors' repository. Their
adaptation loop, ``meta_test_adaptive`` of ``cifar_tta_test.py`` (the function their CIFAR
evaluation calls per corruption: configure the model, build the optimizer, per batch one
step on the loss selected by ``OPTIM.ADAPT`` and a second forward that is scored), and its
``setup_optimizer`` are taken from the git directory given with ``--repo`` at run time (parsed
out of the file with ``ast``; the module itself cannot be imported, it loads a checkpoint and
the data on import) and run here on tta's model and data, together with their ``tent.py`` and
``conf.py`` (config: ``cfgs/cifar.yaml`` with ``MODEL.EPS 0``, i.e. the conjugate loss of a
cross-entropy source; the yaml's ``EPS 6`` belongs to their PolyLoss checkpoint). Nothing of
theirs is copied into this repository. Only ``iopath`` (imported by their ``conf.py``, unused
here) is stubbed.

Both get the SAME model (tta's ``resnet20`` with the pretrained ResNet-20 weights, one fresh
copy per corruption for theirs, as their script's ``copy.deepcopy(net)``; tta's method is set
up once and reset before every corruption, the episodic setting) and the SAME images in the
SAME order (the first ``--n`` images of tta's seeded permutation of each corruption of a
CIFAR-10-C-layout folder, as ``benchmarks/reference_md/compare.py``; one tensor, sliced into
the same batches for both). Their loop is closed (one call per corruption), so the two run
back to back per corruption, not interleaved; their scored logits are recorded by a thin
wrapper around the model (every second call per batch). Continual adaptation is not compared:
their script starts every corruption from the source model with a new optimizer.

    python benchmarks/reference_conjugate/compare.py --repo /work/.mirror/locuslab+tta_conjugate/repo --n 1000

Needs ``yacs`` (their config).
"""

from __future__ import annotations

import argparse
import ast
import math
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "reference_md"))

import tta.methods  # noqa: E402,F401  (registers the methods)
from compare import _provenance, _tta_commit, resnet20  # noqa: E402  (benchmarks/reference_md/compare.py)
from tta.data.corruption_names import BENCHMARK_CORRUPTIONS  # noqa: E402
from tta.protocols.cifar_c import read_severity  # noqa: E402
from tta.registry import METHODS  # noqa: E402
from tta.streams import shuffled, to_tensor  # noqa: E402

THEIR_FILES = ("conf.py", "tent.py", "cifar_tta_test.py", "cfgs/cifar.yaml")
THEIR_FUNCTIONS = ("setup_optimizer", "meta_test_adaptive")


def extract(git_dir: str, into: Path) -> str:
    """Their files under ``into``; returns the commit."""
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", git_dir, "archive", "HEAD", *THEIR_FILES], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def their_loop(root: Path, overrides: list[str]):
    """``meta_test_adaptive`` from their ``cifar_tta_test.py``, bound to their config, ``tent`` module, CPU."""
    for name in ("iopath", "iopath.common"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules.setdefault("iopath.common.file_io", types.SimpleNamespace(g_pathmgr=None))
    sys.path.insert(0, str(root))
    import conf  # their conf.py
    import tent  # their tent.py

    cfg = conf.cfg.clone()
    cfg.merge_from_file(str(root / "cfgs" / "cifar.yaml"))
    cfg.merge_from_list(["MODEL.EPS", 0.0, *overrides])
    tree = ast.parse((root / "cifar_tta_test.py").read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in THEIR_FUNCTIONS]
    namespace = {"torch": torch, "nn": nn, "F": F, "optim": optim, "math": math, "tent": tent, "cfg": cfg,
                 "device": "cpu", "copy_model_and_optimizer": tent.copy_model_and_optimizer,
                 "load_model_and_optimizer": tent.load_model_and_optimizer, "softmax_entropy": tent.softmax_entropy}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(root / "cifar_tta_test.py"), "exec"), namespace)
    return namespace["meta_test_adaptive"], cfg


class Recorder(nn.Module):
    """The model, recording the logits of every call (their loop calls it twice per batch: loss, then score)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.outputs: list[torch.Tensor] = []

    def forward(self, x):
        out = self.net(x)
        self.outputs.append(out.detach())
        return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="git directory of locuslab/tta_conjugate")
    parser.add_argument("--data-root", default="/tmp/tta-cifar10c-jpeg/engine-3",
                        help="folder holding CIFAR-10-C/<corruption>.npy")
    parser.add_argument("--checkpoint", default=str(ROOT.parent / "shared/data/cifar10_resnet20_akamaster.th"))
    parser.add_argument("--corruptions", nargs="+", default=list(BENCHMARK_CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="images per corruption (first n of the permutation)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hp", nargs="*", default=[], help="tta hparams key=value (theirs: --their-opts)")
    parser.add_argument("--their-opts", nargs="*", default=[], help="their config overrides KEY VALUE ...")
    parser.add_argument("--out", help="markdown table (default benchmarks/reference_conjugate/results_conjugate_pl.md)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        commit = extract(args.repo, Path(tmp))
        meta_test_adaptive, cfg = their_loop(Path(tmp), args.their_opts)
        ours = METHODS.get("conjugate_pl")(**dict(kv.split("=", 1) for kv in args.hp))
        ours.setup(resnet20(args.checkpoint))
        rows = []
        for corruption in args.corruptions:
            folder = Path(args.data_root) / "CIFAR-10-C"
            images = read_severity(folder / f"{corruption}.npy", args.severity)
            labels = np.load(folder / "labels.npy")[:len(images)].astype(np.int64)
            order = shuffled(len(labels), args.seed, f"{corruption}-{args.severity}", args.n)
            x_all, y_all = to_tensor(images[order]), torch.from_numpy(labels[order])
            starts = range(0, len(order), args.batch_size)

            theirs = Recorder(resnet20(args.checkpoint))
            start = time.perf_counter()
            their_acc = meta_test_adaptive(theirs, x_all, y_all, args.batch_size, 1, adaptive=True, use_test_bn=True,
                                           num_classes=10)
            their_s = time.perf_counter() - start
            their_logits = theirs.outputs[1::2]  # per batch: the forward after the step (scored)
            their_wrong = sum(int((logits.argmax(1) != y_all[i:i + args.batch_size]).sum())
                              for logits, i in zip(their_logits, starts))
            assert their_wrong == round((1 - their_acc) * len(order)), "recorded logits are not the scored ones"

            ours.reset()
            wrong, gap, our_s = 0, 0.0, 0.0
            for index, i in enumerate(starts):
                x, y = x_all[i:i + args.batch_size], y_all[i:i + args.batch_size]
                start = time.perf_counter()
                with torch.no_grad():
                    logits = ours(x)
                our_s += time.perf_counter() - start
                wrong += int((logits.argmax(1) != y).sum())
                gap = max(gap, float((logits - their_logits[index]).abs().max()))
            n = len(order)
            rows.append((corruption, 100 * wrong / n, 100 * their_wrong / n, n / our_s, n / their_s, gap))
            print(f"{corruption:18s} tta {rows[-1][1]:6.2f}  authors {rows[-1][2]:6.2f}  "
                  f"diff {rows[-1][1] - rows[-1][2]:+.2f}  max logit gap {gap:.1e}", flush=True)

    out = Path(args.out or Path(__file__).parent / "results_conjugate_pl.md")
    optim_cfg = ", ".join(f"OPTIM.{k}={cfg.OPTIM[k]}" for k in ("METHOD", "ADAPT", "LR", "MOMENTUM", "DAMPENING",
                                                                 "NESTEROV", "WD", "TEMP", "STEPS"))
    lines = [
        "# conjugate_pl: tta against the authors' code (locuslab/tta_conjugate, cifar_tta_test.py meta_test_adaptive)",
        "",
        f"Generated by `python benchmarks/reference_conjugate/compare.py --n {args.n}"
        f"{' --hp ' + ' '.join(args.hp) if args.hp else ''}"
        f"{' --their-opts ' + ' '.join(args.their_opts) if args.their_opts else ''}`.",
        f"Authors' commit {commit}; tta commit {_tta_commit()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cpu.",
        f"Model: tta `resnet20` + {Path(args.checkpoint).name} (theirs: a fresh copy per corruption; tta: set up "
        f"once, reset before every corruption). Data: {args.data_root}/CIFAR-10-C ({_provenance(args.data_root)}), "
        f"severity {args.severity}, the first {args.n} images of tta's seeded permutation (seed {args.seed}) per "
        f"corruption, batch {args.batch_size}, the same tensors to both. Setting: episodic (their script's only "
        "one). Both score the forward after the batch's step.",
        f"tta hparams: {ours.hp}. Their config: cfgs/cifar.yaml + MODEL.EPS={cfg.MODEL.EPS} (cross-entropy "
        f"source), {optim_cfg}.",
        "",
        "max logit gap: the largest |tta logit - authors' logit| over the corruption's batches. img/s: each "
        "implementation's loop over the corruption, back to back (theirs also builds the autograd graph of "
        "its scoring forward).",
        "", "| corruption | tta error % | authors' error % | difference | max logit gap | tta img/s | authors' img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ours_err, ref_err, ours_ips, ref_ips, gap in rows:
        lines.append(f"| {name} | {ours_err:.2f} | {ref_err:.2f} | {ours_err - ref_err:+.2f} | {gap:.1e} | "
                     f"{ours_ips:.0f} | {ref_ips:.0f} |")
    mean = np.mean([[r[1], r[2], r[3], r[4]] for r in rows], axis=0)
    worst = max(r[5] for r in rows)
    lines.append(f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | {mean[0] - mean[1]:+.2f} | {worst:.1e} (max) | "
                 f"{mean[2]:.0f} | {mean[3]:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"mean tta {mean[0]:.2f}  authors {mean[1]:.2f}  diff {mean[0] - mean[1]:+.2f} -> {out}")


if __name__ == "__main__":
    main()
