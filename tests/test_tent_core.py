"""tent and core: exact reset (model and optimizer), Tent's reference semantics, the MCC loss,
and on real data (../shared/data) that both beat bn_adapt on severity-5 CIFAR-10-C-style corruptions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import random_resnet20
from tta.errors import UserError
from tta.methods.affine_adapt import OPTIMIZERS
from tta.methods.core import Core, class_confusion_loss
from tta.methods.tent import Tent, softmax_entropy

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_NPZ = SHARED / "cifar10_test_jpeg.npz"
RESNET20 = SHARED / "cifar10_resnet20_akamaster.th"
REAL_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast")  # noise, blur, contrast families


def _random_resnet(seed: int = 0) -> nn.Module:
    return random_resnet20(seed)


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("cls", [Tent, Core])
def test_reset_restores_model_and_optimizer_bit_for_bit(cls):
    method = cls(lr=0.01)
    method.setup(_random_resnet())
    state0 = {k: v.clone() for k, v in method.model.state_dict().items()}
    first = [method.forward(x) for x in _batches()]
    moved = [k for k, v in method.model.state_dict().items() if not torch.equal(v, state0[k])]
    assert moved and all(k.endswith((".weight", ".bias")) and ".bn" in k for k in moved)
    assert method.optimizer.state_dict()["state"]  # Adam moments exist after adapting
    method.reset()
    assert all(torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())
    assert method.optimizer.state_dict() == OPTIMIZERS["adam"](method.params, method.hp).state_dict()
    assert not method.optimizer.state_dict()["state"]
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_tent_matches_a_hand_written_tent_loop_and_predicts_before_the_step():
    """Reference: train-mode BN (batch statistics), only BN affine trainable, Adam(1e-3), return
    the outputs of the forward that is back-propagated (DequanWang/tent forward_and_adapt)."""
    source = _random_resnet()
    reference = copy.deepcopy(source)
    reference.train()
    reference.requires_grad_(False)
    params = []
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            params += [m.weight, m.bias]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    method = Tent()
    method.setup(source)
    for x in _batches(4):
        outputs = reference(x)
        softmax_entropy(outputs).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ours = method.forward(x)
        torch.testing.assert_close(ours, outputs.detach(), rtol=1e-4, atol=1e-4)
    after = dict(reference.named_parameters())
    for name, p in method.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), after[name].detach(), rtol=1e-4, atol=1e-5)


def test_class_confusion_loss_follows_the_docstring_formula():
    logits = torch.randn(12, 5, generator=torch.Generator().manual_seed(3)) * 3
    T = 2.5
    y = torch.softmax(logits.double() / T, 1).numpy()
    h = -(y * np.log(y)).sum(1)
    w = 12 * (1 + np.exp(-h)) / (1 + np.exp(-h)).sum()
    c = np.zeros((5, 5))
    for i in range(12):
        c += w[i] * np.outer(y[i], y[i])
    c = c / c.sum(0, keepdims=True)
    expected = (c.sum() - np.trace(c)) / 5
    assert class_confusion_loss(logits, T).item() == pytest.approx(expected, rel=1e-5)
    # a single example carries no signal: the loss is (K-1)/K whatever the logits
    assert class_confusion_loss(logits[:1], T).item() == pytest.approx(4 / 5, rel=1e-6)
    # confident, distinct predictions are less confused than uniform ones
    assert class_confusion_loss(torch.eye(5) * 20, T) < class_confusion_loss(torch.zeros(5, 5), T)


def test_core_at_batch_one_is_alpha_bn_without_a_step():
    method = Core(lr=0.1)
    method.setup(_random_resnet())
    before = [p.clone() for p in method.params]
    for x in _batches(3, size=1):
        assert torch.isfinite(method.forward(x)).all()
    assert all(torch.equal(a, b) for a, b in zip(before, method.params))


def test_tent_refuses_one_value_per_channel_but_runs_on_conv_batches_of_one():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    method = Tent()
    method.setup(mlp)
    assert method.forward(torch.rand(2, 12)).shape == (2, 3)
    with pytest.raises(UserError, match="one value per channel"):
        method.forward(torch.rand(1, 12))
    conv = Tent()
    conv.setup(_random_resnet())
    assert torch.isfinite(conv.forward(torch.rand(1, 3, 16, 16))).all()


def test_hyperparameters_override_and_validate():
    method = Tent(lr="0.01", steps="2", optimizer="sgd")
    assert method.hp["lr"] == 0.01 and method.hp["steps"] == 2
    method.setup(_random_resnet())
    assert isinstance(method.optimizer, torch.optim.SGD) and method.optimizer.defaults["momentum"] == 0.9
    with pytest.raises(UserError, match="unknown optimizer"):
        Core(optimizer="lbfgs")
    with pytest.raises(UserError, match="no hyperparameter"):
        Tent(alpha=0.1)


# -- real data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_c_root(tmp_path_factory) -> Path:
    """Severity-5 CIFAR-10-C layout from the real test images: rows 40000:50000 of every file
    are ``corrupt(images, name, 5, seed=0)``; severities 1-4 are left zero (unused here)."""
    if not (CIFAR_NPZ.is_file() and RESNET20.is_file()):
        pytest.skip(f"real CIFAR-10 / ResNet-20 not found under {SHARED}")
    from tta.data.corruptions import corrupt

    data = np.load(CIFAR_NPZ)
    images, labels = data["images"], data["labels"]
    folder = tmp_path_factory.mktemp("real") / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    for name in REAL_CORRUPTIONS:
        stacked = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(50000, 32, 32, 3))
        stacked[40000:] = corrupt(images, name, 5, seed=0)
        stacked.flush()
        del stacked
    return folder.parent


def _mean_error(root: Path, method: str, scenario: str, n: int = 1000, batch_size: int | None = None) -> float:
    from tta.runner import Run, RunConfig

    run = Run(RunConfig(protocol="cifar10c", method=method, checkpoint=str(RESNET20), data_root=str(root),
                        domains=list(REAL_CORRUPTIONS), n_examples=n, batch_size=batch_size, scenario=scenario))
    rows = run.execute()
    assert [r["domain"] for r in rows] == [f"{d}-5" for d in REAL_CORRUPTIONS]
    assert all(r["extra"]["nonfinite_resets"] == 0 for r in rows)
    return float(np.mean([r["error"] for r in rows]))


@pytest.fixture(scope="module")
def episodic_errors(real_c_root) -> dict[str, float]:
    return {m: _mean_error(real_c_root, m, "episodic") for m in ("bn_adapt", "alpha_bn")}


@pytest.fixture(scope="module")
def bounded_errors(real_c_root) -> dict[str, float]:
    return {m: _mean_error(real_c_root, m, "episodic", n=2000, batch_size=50) for m in ("bn_adapt", "tent", "core")}


def test_tent_and_core_beat_bn_adapt_on_a_bounded_stream(bounded_errors):
    """2,000 examples per domain in batches of 50 (40 steps, a fifth of the full run's work).
    Measured (engine 3, mean error over the three domains), seed 0: bn_adapt 36.50%, tent
    35.82%, core 35.32%, alpha_bn 36.48%; bn_adapt minus method, seeds 1 and 2 (other subsets
    and orders): tent 0.43 and 0.32, core 1.52 and 1.35 points; 4,000 examples in batches of
    100: tent 0.67, core 1.57. The margins asserted are below the smallest of these; a step that
    does nothing (tent = bn_adapt, core = alpha_bn, 0.02 below it) or climbs the loss fails.
    The full-length claim is the slow test below."""
    assert bounded_errors["tent"] < bounded_errors["bn_adapt"] - 0.2
    assert bounded_errors["core"] < bounded_errors["bn_adapt"] - 0.6


@pytest.fixture(scope="module")
def full_length_errors(real_c_root) -> dict[str, float]:
    return {m: _mean_error(real_c_root, m, "episodic", n=10000) for m in ("bn_adapt", "tent", "core")}


@pytest.mark.slow  # about 15 CPU minutes; run with `pytest -m slow`
def test_tent_and_core_beat_bn_adapt_episodic(full_length_errors):
    """All 10,000 examples per domain, batch 200 (50 steps). Measured with engine version 2,
    seed 0: bn_adapt 34.86%, tent 33.36%, core 32.38% (mean over the three domains). Shorter
    streams do not separate them: at 3,000 examples the margins were 0.5 and 0.6 points, and at
    1,000 (5 steps) core was 0.1 points worse than bn_adapt with these noise draws and better
    with the previous engine's."""
    assert full_length_errors["tent"] < full_length_errors["bn_adapt"] - 0.5
    assert full_length_errors["core"] < full_length_errors["bn_adapt"] - 0.5


def test_dirichlet_order_hurts_bn_adapt_more_than_alpha_bn(real_c_root, episodic_errors):
    rise = {m: _mean_error(real_c_root, m, "dirichlet:delta=0.1") - episodic_errors[m] for m in ("bn_adapt", "alpha_bn")}
    assert rise["bn_adapt"] > 5.0
    assert rise["alpha_bn"] < rise["bn_adapt"]
