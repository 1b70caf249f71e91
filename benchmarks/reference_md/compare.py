"""Side by side: a tta method against its mariodoebler/test-time-adaptation ("MD") counterpart.

Both implementations get the SAME model (tta's ``resnet20`` with the pretrained weights,
one fresh copy each; it normalizes its input inside ``forward``), the SAME images and the
SAME order: one loader here reads the first-N images of a seeded permutation of each
corruption at one severity from a CIFAR-10-C-layout folder (tta's own stream order,
``tta.streams.shuffled``) and hands every batch, the identical tensor, to both. MD's method
class is called directly (its ``forward``), built from MD's CIFAR-10-C config of that method
merged over MD's ``conf.py`` defaults; tta's method comes from ``tta.registry.METHODS`` with
its defaults. The calls alternate batch by batch in one process (same threads), so the
images/s columns compare like with like.

MD's code is never copied into this repository: it is extracted at run time from the git
directory given with ``--md`` into a temporary folder. Only the modules a method needs are
imported (MD's ``methods/__init__`` imports every method and their dependencies, e.g.
open_clip); MD modules that would download (``models.model``, ``datasets.data_loading``) or
that only its CLI uses (``iopath``) are replaced by stubs: the model comes from here, and
EATA's Fisher loader (MD: ``get_source_loader``, 2,000 random CIFAR-10 *training* images)
is replaced by batches of clean CIFAR-10 *test* images, the same batches that tta's
``eata`` gets, since the training set is not available offline.

Settings: ``episodic`` = MD ``reset_each_shift`` (both reset before every corruption);
``continual`` = MD ``continual`` (no reset). Needs ``yacs`` in the environment (MD's config).

    python benchmarks/reference_md/compare.py --md /work/.mirror/mariodoebler+test-time-adaptation/repo \\
        --method eta --n 2000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tta.methods  # noqa: E402,F401  (registers the methods)
from tta.data.corruption_names import BENCHMARK_CORRUPTIONS  # noqa: E402
from tta.models import create_model, load_into  # noqa: E402
from tta.models.split import split_classifier  # noqa: E402
from tta.protocols.cifar_c import read_severity  # noqa: E402
from tta.registry import METHODS  # noqa: E402
from tta.streams import batches, shuffled, to_tensor  # noqa: E402


@dataclass(frozen=True)
class Pairing:
    """A tta method, its MD class and MD config file (under ``cfgs/cifar10_c``), and tta hparams."""

    md_module: str
    md_class: str
    md_config: str
    tta_hparams: dict = field(default_factory=dict)
    #: the method draws random numbers (deyo's patch shuffle): tta's from the generator it owns, seeded with
    #: ``--rng-seed`` (constructor ``seed``); MD's from torch's global generator, re-seeded with ``--md-rng-seed``
    #: at every reset. Equal seeds give both the same draws (a bit-level comparison); unequal, independent ones.
    seeded: bool = False
    #: MD's class returns probabilities (LAME's assignment), not logits: tta's logits are compared through softmax
    md_probabilities: bool = False
    #: MD's constructor calls ``.cuda()`` (CMF's moving average): built with ``Tensor.cuda`` as the identity on
    #: a machine without CUDA
    md_cuda_stub: bool = False
    #: name of a function of this module applied to MD's instance after construction (a fix MD needs on CPU)
    md_patch: str = ""


PAIRINGS = {
    "bn_ema": Pairing("methods.norm", "BNEMA", "norm_ema.yaml"),
    "eta": Pairing("methods.eata", "EATA", "eta.yaml"),
    "eata": Pairing("methods.eata", "EATA", "eata.yaml"),
    "rdumb": Pairing("methods.eata", "EATA", "rdumb.yaml"),
    "sar": Pairing("methods.sar", "SAR", "sar.yaml"),
    "deyo": Pairing("methods.deyo", "DeYO", "deyo.yaml", seeded=True),
    "rpl": Pairing("methods.rpl", "RPL", "rpl.yaml"),
    "tent": Pairing("methods.tent", "Tent", "tent.yaml"),
    "cotta": Pairing("methods.cotta", "CoTTA", "cotta.yaml", seeded=True),
    "rotta": Pairing("methods.rotta", "RoTTA", "rotta.yaml", seeded=True, md_patch="rotta_cpu_fix"),
    "lame": Pairing("methods.lame", "LAME", "lame.yaml", md_probabilities=True),
    "roid": Pairing("methods.roid", "ROID", "roid.yaml", seeded=True),
    "cmf": Pairing("methods.cmf", "CMF", "cmf.yaml", seeded=True, md_cuda_stub=True),
    "memo": Pairing("methods.memo", "MEMO", "memo.yaml", seeded=True, md_patch="memo_views"),
}

MD_PATHS = ("classification/methods", "classification/utils", "classification/augmentations", "classification/conf.py", "classification/cfgs/cifar10_c")


def extract_md(git_dir: str, into: Path) -> tuple[Path, str]:
    """MD's classification code (only the paths this harness imports) under ``into``; its commit."""
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", git_dir, "archive", "HEAD", *MD_PATHS], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "classification", commit


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _Unused(nn.Module):
    """Stands in for MD model classes the harness never builds."""


#: the Fisher batches MD's EATA gets from the stubbed ``get_source_loader`` (set per run)
FISHER_BATCHES: list[tuple[torch.Tensor, torch.Tensor]] = []


def install_md(md_root: Path):
    """Make MD's modules importable without its heavy or downloading ones; return MD's config module."""
    _module("iopath")
    _module("iopath.common")
    _module("iopath.common.file_io", g_pathmgr=None)
    _module("models", __path__=[])
    _module("models.model", ResNetDomainNet126=_Unused,
            split_up_model=lambda model, *a, **k: split_classifier(model, "MD's split_up_model stub"))
    _module("datasets", __path__=[])
    _module("datasets.data_loading", get_source_loader=lambda **kwargs: (None, list(FISHER_BATCHES)))
    _module("methods", __path__=[str(md_root / "methods")])  # skip methods/__init__ (imports every method)
    sys.path.insert(0, str(md_root))
    import conf  # MD's conf.py

    return conf


def md_method(conf, md_root: Path, pairing: Pairing, model: nn.Module, overrides: list[str]):
    import importlib

    cfg = conf.cfg.clone()
    cfg.merge_from_file(str(md_root / "cfgs" / "cifar10_c" / pairing.md_config))
    cfg.merge_from_list(["MODEL.EPISODIC", False, *overrides])
    cls = getattr(importlib.import_module(pairing.md_module), pairing.md_class)
    model.model_preprocess = None  # read by EATA when it builds its source loader (stubbed)
    if pairing.md_cuda_stub and not torch.cuda.is_available():
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        try:
            return cls(cfg, model, 10), cfg
        finally:
            torch.Tensor.cuda = cuda
    return cls(cfg, model, 10), cfg


def resnet20(checkpoint: str) -> nn.Module:
    model = create_model("resnet20", num_classes=10)
    load_into(model.net, checkpoint)
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", required=True, help="git directory of mariodoebler/test-time-adaptation")
    parser.add_argument("--method", required=True, choices=sorted(PAIRINGS))
    parser.add_argument("--data-root", default="/tmp/tta-cifar10c-jpeg/engine-3",
                        help="folder holding CIFAR-10-C/<corruption>.npy")
    parser.add_argument("--checkpoint", default=str(ROOT.parent / "shared/data/cifar10_resnet20_akamaster.th"))
    parser.add_argument("--clean", default=str(ROOT.parent / "shared/data/cifar10_test_jpeg.npz"),
                        help="clean CIFAR-10 test images (npz with 'images'), EATA's Fisher data")
    parser.add_argument("--corruptions", nargs="+", default=list(BENCHMARK_CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="images per corruption (first n of the permutation)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", choices=("episodic", "continual"), default="episodic")
    parser.add_argument("--hp", nargs="*", default=[], help="tta hparams key=value (MD's side: --md-opts)")
    parser.add_argument("--md-opts", nargs="*", default=[], help="MD config overrides KEY VALUE ...")
    parser.add_argument("--md-no-augment", action="store_true",
                        help="MD's `transform` (its CoTTA augmentation) replaced by the identity; with tta's "
                             "strong_augment=false a comparison without random draws")
    parser.add_argument("--md-reset-attr", nargs="*", default=[], metavar="NAME=VALUE",
                        help="set these float attributes of MD's method after each reset (e.g. CMF's hidden_var=0, "
                             "which MD's reset keeps from the episode before; tta's reset clears it)")
    parser.add_argument("--md-reset-optimizer-state", action="store_true",
                        help="MD's reset also empties the state of the optimizer its SAM wrapper holds (MD's SAR "
                             "keeps the SGD momentum across resets; tta's reset clears it)")
    parser.add_argument("--rng-seed", type=int, help="seed of a seeded method's draws (default: --seed)")
    parser.add_argument("--md-rng-seed", type=int, help="seed of MD's global generator (default: --rng-seed)")
    parser.add_argument("--out", help="markdown table (default benchmarks/reference_md/results_<method>.md)")
    args = parser.parse_args(argv)
    pairing = PAIRINGS[args.method]
    torch.manual_seed(args.seed)
    rng_seed = args.seed if args.rng_seed is None else args.rng_seed
    md_rng_seed = rng_seed if args.md_rng_seed is None else args.md_rng_seed

    with tempfile.TemporaryDirectory() as tmp:
        md_root, md_commit = extract_md(args.md, Path(tmp))
        conf = install_md(md_root)
        hp = {**pairing.tta_hparams, **dict(kv.split("=", 1) for kv in args.hp)}
        ours = METHODS.get(args.method)(**hp, **({"seed": rng_seed} if pairing.seeded else {}))
        ours.setup(resnet20(args.checkpoint))
        fisher_note = ""
        if ours.source_images_wanted():
            clean = np.load(args.clean)["images"]
            order = shuffled(len(clean), args.seed, "fisher", ours.hp["fisher_samples"])
            FISHER_BATCHES[:] = [(to_tensor(clean[order[i:i + args.batch_size]]), torch.zeros(0))
                                 for i in range(0, len(order), args.batch_size)]
            ours.fit_source((x for x, _ in FISHER_BATCHES), "clean CIFAR-10 test images")
            fisher_note = (f"Fisher data (both): {len(order)} clean CIFAR-10 test images (seeded subset), "
                           f"batches of {args.batch_size}.")
        ref, cfg = md_method(conf, md_root, pairing, resnet20(args.checkpoint), args.md_opts)
        if args.md_reset_optimizer_state:
            clear_optimizer_state_on_reset(ref)
        if pairing.md_patch:
            globals()[pairing.md_patch](ref)
        if args.md_no_augment:
            ref.transform = lambda images: images
        extras = []
        rows = []
        for index, corruption in enumerate(args.corruptions):
            images = read_severity(Path(args.data_root) / "CIFAR-10-C" / f"{corruption}.npy", args.severity)
            labels = np.load(Path(args.data_root) / "CIFAR-10-C" / "labels.npy")[:len(images)].astype(np.int64)
            order = shuffled(len(labels), args.seed, f"{corruption}-{args.severity}", args.n)
            if args.setting == "episodic" or index == 0:
                ours.reset()
                ref.reset()
                for name, value in (kv.split("=", 1) for kv in args.md_reset_attr):
                    setattr(ref, name, float(value))
                if pairing.seeded:
                    torch.manual_seed(md_rng_seed)
                    np.random.seed(md_rng_seed)  # MD's AugMix (memo) draws from numpy's global generator
            wrong, seconds, gap = [0, 0], [0.0, 0.0], 0.0
            for batch in batches(images, labels, order, args.batch_size, corruption):
                outputs = []
                for side, call in enumerate((ours, ref)):
                    x = batch.x.clone(memory_format=torch.preserve_format)
                    start = time.perf_counter()
                    if side == 0 and not ours.needs_grad:
                        with torch.inference_mode():
                            logits = call(x)
                    else:
                        with torch.no_grad():
                            logits = call(x)
                    seconds[side] += time.perf_counter() - start
                    if side == 0 and pairing.md_probabilities:
                        logits = logits.softmax(1)
                    wrong[side] += int((logits.argmax(1) != batch.y).sum())
                    outputs.append(logits.detach().float())
                gap = max(gap, float((outputs[0] - outputs[1]).abs().max()))
            n = len(order)
            rows.append((corruption, 100 * wrong[0] / n, 100 * wrong[1] / n, n / seconds[0], n / seconds[1], gap))
            extras.append(f"{corruption} {ours.row_extra()}" if ours.row_extra() else "")
            print(f"{corruption:18s} tta {rows[-1][1]:6.2f}  MD {rows[-1][2]:6.2f}  diff {rows[-1][1] - rows[-1][2]:+.2f}"
                  f"  max logit gap {gap:.1e}  {extras[-1]}", flush=True)

    out = Path(args.out or Path(__file__).parent / f"results_{args.method}.md")
    lines = [
        f"# {args.method}: tta against MD ({pairing.md_class}, cfgs/cifar10_c/{pairing.md_config})",
        "",
        f"Generated by `python benchmarks/reference_md/compare.py --method {args.method} --n {args.n} "
        f"--setting {args.setting}{' --hp ' + ' '.join(args.hp) if args.hp else ''}"
        f"{' --md-opts ' + ' '.join(args.md_opts) if args.md_opts else ''}"
        f"{' --md-reset-optimizer-state' if args.md_reset_optimizer_state else ''}"
        f"{' --md-reset-attr ' + ' '.join(args.md_reset_attr) if args.md_reset_attr else ''}"
        f"{' --md-no-augment' if args.md_no_augment else ''}"
        f"{f' --rng-seed {rng_seed} --md-rng-seed {md_rng_seed}' if pairing.seeded else ''}`.",
        f"MD commit {md_commit}; tta commit {_tta_commit()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}.",
        f"Model: tta `resnet20` + {Path(args.checkpoint).name} (one fresh copy each). Data: {args.data_root}/CIFAR-10-C "
        f"({_provenance(args.data_root)}), severity {args.severity}, the first {args.n} images of tta's seeded "
        f"permutation (seed {args.seed}) per corruption, batch {args.batch_size}, identical tensors to both. "
        f"Setting: {args.setting} (MD {'reset_each_shift' if args.setting == 'episodic' else 'continual'}).",
        f"tta hparams: {ours.hp}. MD config: {_md_summary(cfg, pairing)}.",
    ]
    if any(extras):
        lines.append(f"tta `row_extra()` after each corruption: {'; '.join(extras)}.")
    if fisher_note:
        lines.append(fisher_note)
    if pairing.seeded:
        lines.append(f"Random draws: tta's generator seeded {rng_seed}, MD's global generator seeded {md_rng_seed} "
                     "at every reset" + (" (the same draws)." if rng_seed == md_rng_seed else " (independent draws)."))
    if pairing.md_probabilities:
        lines.append("MD's class returns probabilities: the errors and the max logit gap column compare softmax(tta "
                     "logits) with MD's output (a gap in probabilities).")
    lines += ["", "max logit gap: the largest |tta logit - MD logit| over the corruption's batches.",
              "", "| corruption | tta error % | MD error % | difference | max logit gap | tta img/s | MD img/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ours_err, ref_err, ours_ips, ref_ips, gap in rows:
        lines.append(f"| {name} | {ours_err:.2f} | {ref_err:.2f} | {ours_err - ref_err:+.2f} | {gap:.1e} | "
                     f"{ours_ips:.0f} | {ref_ips:.0f} |")
    mean = np.mean([[r[1], r[2], r[3], r[4]] for r in rows], axis=0)
    worst = max(r[5] for r in rows)
    lines.append(f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | {mean[0] - mean[1]:+.2f} | {worst:.1e} (max) | "
                 f"{mean[2]:.0f} | {mean[3]:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"mean tta {mean[0]:.2f}  MD {mean[1]:.2f}  diff {mean[0] - mean[1]:+.2f} -> {out}")


def _md_summary(cfg, pairing: Pairing) -> str:
    eata = ("OPTIM.METHOD", "OPTIM.LR", "OPTIM.BETA", "OPTIM.STEPS", "EATA.MARGIN_E0",
            "EATA.D_MARGIN", "EATA.FISHER_ALPHA", "SOURCE.NUM_SAMPLES")
    keys = {"norm_ema.yaml": (), "lame.yaml": ("LAME.AFFINITY", "LAME.KNN", "LAME.SIGMA", "LAME.FORCE_SYMMETRY"), "rpl.yaml": (*eata[:4], "OPTIM.WD", "RPL.Q"),
            "sar.yaml": ("OPTIM.LR", "OPTIM.MOMENTUM", "OPTIM.STEPS", "EATA.MARGIN_E0", "SAR.RESET_CONSTANT_EM"),
            "rdumb.yaml": (*eata, "MODEL.RESET_AFTER_NUM_UPDATES"),
            "rotta.yaml": (*eata[:4], "OPTIM.WD", "ROTTA.MEMORY_SIZE", "ROTTA.UPDATE_FREQUENCY", "ROTTA.NU",
                           "ROTTA.ALPHA", "ROTTA.LAMBDA_T", "ROTTA.LAMBDA_U"),
            "memo.yaml": ("OPTIM.METHOD", "OPTIM.LR", "OPTIM.STEPS", "OPTIM.MOMENTUM", "OPTIM.NESTEROV", "OPTIM.WD",
                          "BN.ALPHA", "TEST.N_AUGMENTATIONS"),
            "cotta.yaml": (*eata[:4], "OPTIM.WD", "M_TEACHER.MOMENTUM", "COTTA.RST", "COTTA.AP",
                           "TEST.N_AUGMENTATIONS"),
            "cmf.yaml": (*eata[:4], "OPTIM.WD", "ROID.USE_WEIGHTING", "ROID.USE_PRIOR_CORRECTION",
                         "ROID.USE_CONSISTENCY", "ROID.MOMENTUM_PROBS", "ROID.TEMPERATURE", "CMF.ALPHA", "CMF.GAMMA",
                         "CMF.Q", "CMF.TYPE"),
            "roid.yaml": (*eata[:4], "OPTIM.WD", "ROID.USE_WEIGHTING", "ROID.USE_PRIOR_CORRECTION",
                          "ROID.USE_CONSISTENCY", "ROID.MOMENTUM_SRC", "ROID.MOMENTUM_PROBS", "ROID.TEMPERATURE"),
            "deyo.yaml": (*eata[:4], "OPTIM.WD", "EATA.MARGIN_E0", "DEYO.MARGIN", "DEYO.PLPD", "DEYO.REWEIGHT_ENT",
                          "DEYO.REWEIGHT_PLPD", "DEYO.AUG_TYPE", "DEYO.PATCH_LEN")}.get(pairing.md_config, eata)
    values = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        values.append(f"{key}={node}")
    return ", ".join(values) or "defaults (no options)"


def rotta_cpu_fix(ref) -> None:
    """MD's RoTTA calls ``self.loss_calculation(x)`` in its non-AMP branch (methods/rotta.py line 87), a method
    that takes no argument: on CPU it raises TypeError. Call it without the argument, nothing else changed."""
    compute = ref.loss_calculation
    ref.loss_calculation = lambda *unused: compute()


def memo_views(ref) -> None:
    """MD's MEMO takes what its loader's ``AugMixAugmenter`` makes of one PIL image, ``[image, view_1..view_32]``
    (each a batch of one): each image of the harness's batch goes through MD's own augmenter (extracted with its
    code; ``base_transform`` None as for CIFAR) and then MD's ``forward``. Episodic per image, as MD's config
    (``MODEL.EPISODIC: True``, which ``md_method`` turns off): MD's ``reset`` before each image."""
    from augmentations.transforms_augmix import AugMixAugmenter
    from PIL import Image
    from torchvision import transforms

    augmenter = AugMixAugmenter(None, transforms.Compose([transforms.ToTensor()]), dataset_name="cifar10_c",
                                n_views=ref.cfg.TEST.N_AUGMENTATIONS, use_augmix=True)
    ref.episodic = True
    forward = ref.forward

    def per_image(x):
        outputs = []
        for image in x:
            pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            outputs.append(forward([view.unsqueeze(0) for view in augmenter(Image.fromarray(pixels))]))
        return torch.cat(outputs)

    ref.forward = per_image


def adacontrast_views(ref) -> None:
    """MD's AdaContrast takes the batch as the four views its data loader makes (``twss``, ``moco-v2-light``,
    32 x 32; ``datasets/data_loading.py``): here MD's own transform is applied to each raw test image (as a
    PIL image, exact for images read from uint8) and the views stacked. ``--md-no-augment`` replaces it by the
    identity: all four views are the raw batch."""
    from augmentations.transforms_adacontrast import get_augmentation_versions
    from torchvision.transforms.functional import to_pil_image

    views = get_augmentation_versions(aug_versions="twss", aug_type="moco-v2-light", res_size=(32, 32), crop_size=32)
    ref.transform = lambda x: [torch.stack(v) for v in zip(*(views(to_pil_image(img)) for img in x))]
    forward = ref.forward

    def forward_views(x):
        made = ref.transform(x)
        return forward(made if isinstance(made, list) else [made] * 4)

    ref.forward = forward_views


def clear_optimizer_state_on_reset(ref) -> None:
    """After MD's ``load_model_and_optimizer``, also empty the state of the optimizer a ``SAM`` wrapper holds
    (``SAM.load_state_dict`` restores the wrapper's own state only; for a plain optimizer this is a no-op)."""
    load = ref.load_model_and_optimizer

    def load_and_clear():
        load()
        getattr(ref.optimizer, "base_optimizer", ref.optimizer).state.clear()

    ref.load_model_and_optimizer = load_and_clear


def _tta_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _provenance(root: str) -> str:
    from tta.protocols.cifar_c import provenance

    return provenance(Path(root) / "CIFAR-10-C")


if __name__ == "__main__":
    main()
