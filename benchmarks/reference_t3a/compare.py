"""Side by side: tta's ``t3a`` against the authors' ``T3A`` class (matsuolab/T3A).

MD has no T3A, so the reference is the authors' repository: their ``T3A`` class
(``domainbed/adapt_algorithms.py``) is read from the git directory given with ``--repo`` at run
time (extracted to a temporary folder, nothing of theirs is copied into this repository) and
imported with ``domainbed.algorithms`` stubbed (their module imports it only for the ``Algorithm``
base class, an ``nn.Module`` that stores ``hparams``; the real one imports their networks).

Both get the SAME model (tta's ``resnet20`` with the pretrained weights, one fresh copy each)
split by :func:`tta.models.split.split_classifier` (theirs: ``algorithm.featurizer`` = the
features, ``algorithm.classifier`` = the final ``nn.Linear``), the SAME images in the SAME
order (the first ``--n`` images of tta's seeded permutation of each corruption of a
CIFAR-10-C-layout folder, as ``benchmarks/reference_md/compare.py``), the identical batch
tensor to both, calls interleaved batch by batch in one process (theirs:
``predict(x, adapt=True)``, as their ``accuracy_ent`` evaluation). Their hparams:
``filter_K`` (``--filter-k``, tta's the same) and ``cached_loader=False``.
Settings: ``episodic`` (both reset before every corruption: tta ``reset()``, theirs ``reset()``,
as their script between evaluation environments) and ``continual`` (no reset).

    python benchmarks/reference_t3a/compare.py --repo /work/.mirror/matsuolab+T3A/repo --n 1000 --setting episodic
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "reference_md"))

import tta.methods  # noqa: E402,F401  (registers the methods)
from compare import _provenance, _tta_commit, resnet20  # noqa: E402  (benchmarks/reference_md/compare.py)
from tta.data.corruption_names import BENCHMARK_CORRUPTIONS  # noqa: E402
from tta.models.split import split_classifier  # noqa: E402
from tta.protocols.cifar_c import read_severity  # noqa: E402
from tta.registry import METHODS  # noqa: E402
from tta.streams import batches, shuffled  # noqa: E402

THEIR_FILE = "domainbed/adapt_algorithms.py"


class _Algorithm(nn.Module):
    """Stands in for their ``domainbed.algorithms.Algorithm`` (an ``nn.Module`` keeping ``hparams``)."""

    def __init__(self, input_shape, num_classes, num_domains, hparams) -> None:
        super().__init__()
        self.hparams = hparams


def their_t3a_class(git_dir: str, into: Path):
    """Their ``T3A`` class and the commit it comes from."""
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", git_dir, "archive", "HEAD", THEIR_FILE], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    package = types.ModuleType("domainbed")
    package.__path__ = [str(into / "domainbed")]
    sys.modules["domainbed"] = package
    algorithms = types.ModuleType("domainbed.algorithms")
    algorithms.Algorithm = _Algorithm
    sys.modules["domainbed.algorithms"] = algorithms
    import domainbed.adapt_algorithms as theirs

    return theirs.T3A, commit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="git directory of matsuolab/T3A")
    parser.add_argument("--data-root", default="/tmp/tta-cifar10c-jpeg/engine-3",
                        help="folder holding CIFAR-10-C/<corruption>.npy")
    parser.add_argument("--checkpoint", default=str(ROOT.parent / "shared/data/cifar10_resnet20_akamaster.th"))
    parser.add_argument("--corruptions", nargs="+", default=list(BENCHMARK_CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="images per corruption (first n of the permutation)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", choices=("episodic", "continual"), default="episodic")
    parser.add_argument("--filter-k", type=int, default=None, help="filter_K of both (default: tta's default)")
    parser.add_argument("--out", help="markdown table (default benchmarks/reference_t3a/results_t3a_<setting>.md)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        T3A, commit = their_t3a_class(args.repo, Path(tmp))
        ours = METHODS.get("t3a")(**({} if args.filter_k is None else {"filter_K": args.filter_k}))
        ours.setup(resnet20(args.checkpoint))
        filter_k = ours.hp["filter_K"]
        features, classifier = split_classifier(resnet20(args.checkpoint), "the authors' T3A")
        ref = T3A((3, 32, 32), 10, 1, {"filter_K": filter_k, "cached_loader": False},
                  types.SimpleNamespace(featurizer=features, classifier=classifier))
        rows = []
        for index, corruption in enumerate(args.corruptions):
            folder = Path(args.data_root) / "CIFAR-10-C"
            images = read_severity(folder / f"{corruption}.npy", args.severity)
            labels = np.load(folder / "labels.npy")[:len(images)].astype(np.int64)
            order = shuffled(len(labels), args.seed, f"{corruption}-{args.severity}", args.n)
            if args.setting == "episodic" or index == 0:
                ours.reset()
                ref.reset()
            wrong, seconds, gap = [0, 0], [0.0, 0.0], 0.0
            for batch in batches(images, labels, order, args.batch_size, corruption):
                outputs = []
                for side in (0, 1):
                    x = batch.x.clone(memory_format=torch.preserve_format)
                    start = time.perf_counter()
                    if side == 0:
                        with torch.inference_mode():
                            logits = ours(x)
                    else:
                        with torch.no_grad():
                            logits = ref.predict(x, adapt=True)
                    seconds[side] += time.perf_counter() - start
                    wrong[side] += int((logits.argmax(1) != batch.y).sum())
                    outputs.append(logits.detach().float())
                gap = max(gap, float((outputs[0] - outputs[1]).abs().max()))
            n = len(order)
            supports = (ours.supports.shape[0], ref.supports.shape[0])
            rows.append((corruption, 100 * wrong[0] / n, 100 * wrong[1] / n, n / seconds[0], n / seconds[1], gap,
                         supports))
            print(f"{corruption:18s} tta {rows[-1][1]:6.2f}  authors {rows[-1][2]:6.2f}  "
                  f"diff {rows[-1][1] - rows[-1][2]:+.2f}  max logit gap {gap:.1e}  supports {supports}", flush=True)

    out = Path(args.out or Path(__file__).parent / f"results_t3a_{args.setting}.md")
    lines = [
        "# t3a: tta against the authors' code (matsuolab/T3A, domainbed/adapt_algorithms.py T3A)",
        "",
        f"Generated by `python benchmarks/reference_t3a/compare.py --n {args.n} --setting {args.setting}"
        f"{f' --filter-k {args.filter_k}' if args.filter_k is not None else ''}`.",
        f"Authors' commit {commit}; tta commit {_tta_commit()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cpu.",
        f"Model: tta `resnet20` + {Path(args.checkpoint).name} (one fresh copy each), split by "
        "tta.models.split.split_classifier (theirs: featurizer = the features, classifier = the final linear). "
        f"Data: {args.data_root}/CIFAR-10-C ({_provenance(args.data_root)}), severity {args.severity}, the first "
        f"{args.n} images of tta's seeded permutation (seed {args.seed}) per corruption, batch {args.batch_size}, "
        f"identical tensors to both, calls interleaved. Setting: {args.setting} "
        f"({'both reset before every corruption' if args.setting == 'episodic' else 'no reset'}).",
        f"tta hparams: {ours.hp}. Theirs: filter_K={filter_k}, cached_loader=False, predict(x, adapt=True).",
        "",
        "max logit gap: the largest |tta logit - authors' logit| over the corruption's batches; supports: the size "
        "of each side's support set after the corruption.",
        "", "| corruption | tta error % | authors' error % | difference | max logit gap | supports tta / authors "
        "| tta img/s | authors' img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ours_err, ref_err, ours_ips, ref_ips, gap, supports in rows:
        lines.append(f"| {name} | {ours_err:.2f} | {ref_err:.2f} | {ours_err - ref_err:+.2f} | {gap:.1e} | "
                     f"{supports[0]} / {supports[1]} | {ours_ips:.0f} | {ref_ips:.0f} |")
    mean = np.mean([[r[1], r[2], r[3], r[4]] for r in rows], axis=0)
    worst = max(r[5] for r in rows)
    lines.append(f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | {mean[0] - mean[1]:+.2f} | {worst:.1e} (max) | | "
                 f"{mean[2]:.0f} | {mean[3]:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"mean tta {mean[0]:.2f}  authors {mean[1]:.2f}  diff {mean[0] - mean[1]:+.2f} -> {out}")


if __name__ == "__main__":
    main()
