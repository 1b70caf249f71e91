"""sar: the SAM step hand-computed on a tiny LayerNorm model (perturbed weights, restored weights,
the gradient used), the two reliable-entropy filters, the loss EMA and the recovery trigger,
layer exclusions, exact reset, non-finite state, a batch of one image, a run through ``Run``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import random_resnet20
from tta.methods.affine_adapt import OPTIMIZERS, GradTestBatchNorm
from tta.methods.sar import SAR
from tta.methods.tent import softmax_entropy
from tta.models import Normalized
from tta.runner import Run, RunConfig

RHO, LR = 2.0, 0.1
E0 = 0.4 * math.log(3)


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    """Linear -> LayerNorm -> Linear, 3 classes; 8 inputs of which samples 1, 3, 5 are reliable
    (E < 0.4 ln 3) at the start, 1 and 3 still at the perturbed weights, and 0, 2, 4, 7, unreliable at
    the start, reliable at the perturbed weights (the second filter must look at S1 only).
    Entropies stay >= 0.018 away from E0 (found by a search over seeds, scale and rho)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(3.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    x = 3 * torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    return model, x


def _forward(model: nn.Module, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return model[2](F.layer_norm(model[0](x), (6,), w, b))


def _hand_step(model, x):
    """SAR's step written out: S1, g, e = rho g/||g||, S2 within S1 at w + e, its gradient g2."""
    w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    e1 = softmax_entropy(_forward(model, w, b, x))
    s1 = e1 < E0
    gw, gb = torch.autograd.grad(e1[s1].mean(), (w, b))
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    ew, eb = RHO * gw / norm, RHO * gb / norm
    wp, bp = (w0 + ew).requires_grad_(True), (b0 + eb).requires_grad_(True)
    e2 = softmax_entropy(_forward(model, wp, bp, x))
    s2 = s1 & (e2 < E0)
    loss2 = e2[s2].mean()
    g2w, g2b = torch.autograd.grad(loss2, (wp, bp))
    return dict(w0=w0, b0=b0, e1=e1.detach(), e2=e2.detach(), s1=s1, s2=s2, ew=ew, eb=eb, gw=gw, gb=gb,
                loss2=loss2.detach(), g2w=g2w, g2b=g2b)


def _sar(model, **hp) -> SAR:
    method = SAR(rho=RHO, lr=LR, **hp)
    method.setup(model)
    return method


# -- the defining step ---------------------------------------------------------------------------


def test_sam_step_equals_the_hand_computed_step():
    model, x = _tiny()
    h = _hand_step(model, x)
    assert torch.nonzero(h["s1"]).squeeze(1).tolist() == [1, 3, 5]
    assert torch.nonzero(h["s2"]).squeeze(1).tolist() == [1, 3]
    assert torch.nonzero(~h["s1"] & (h["e2"] < E0)).squeeze(1).tolist() == [0, 2, 4, 7]
    assert float((h["e1"] - E0).abs().min()) > 0.01 and float((h["e2"] - E0).abs().min()) > 0.01
    with torch.no_grad():
        source_logits = model(x)

    method = _sar(model, reset_constant_em=0.0)
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append((m.weight.detach().clone(), m.bias.detach().clone())))
    logits = method.forward(x)

    torch.testing.assert_close(logits, source_logits, rtol=0, atol=1e-6)  # prediction before the step
    assert len(seen) == 2  # two forward passes
    torch.testing.assert_close(seen[0][0], h["w0"], rtol=0, atol=0)
    torch.testing.assert_close(seen[1][0], h["w0"] + h["ew"], rtol=0, atol=1e-6)  # perturbed: w + rho g/||g||
    torch.testing.assert_close(seen[1][1], h["b0"] + h["eb"], rtol=0, atol=1e-6)
    # restored w, then SGD (first step: the momentum buffer is the gradient) with the gradient at w + e
    torch.testing.assert_close(model[1].weight.detach(), h["w0"] - LR * h["g2w"], rtol=0, atol=1e-6)
    torch.testing.assert_close(model[1].bias.detach(), h["b0"] - LR * h["g2b"], rtol=0, atol=1e-6)
    assert not torch.allclose(model[1].weight.detach(), h["w0"] - LR * h["gw"], atol=1e-3)  # not the plain gradient
    assert method.ema == pytest.approx(float(h["loss2"]), rel=1e-6)
    # re-filtering the whole batch at w + e (not S1 only) would give another loss
    assert float(h["e2"][h["e2"] < E0].mean()) != pytest.approx(float(h["loss2"]), rel=1e-3)
    assert all(p.grad is None for p in method.params)


def test_nothing_reliable_still_steps_on_momentum_and_leaves_the_ema():
    model, x = _tiny()
    h = _hand_step(model, x)
    method = _sar(model, reset_constant_em=0.0)
    method.forward(x)
    ema = method.ema
    w1 = model[1].weight.detach().clone()
    method.hp = {**method.hp, "e0_factor": 0.0}  # E < 0 never holds: zero gradient (the reference's empty mean)
    method.forward(x)
    torch.testing.assert_close(model[1].weight.detach(), w1 - LR * 0.9 * h["g2w"], rtol=0, atol=1e-6)
    assert method.ema == ema and method.recoveries == 0


def test_loss_ema_is_the_reference_python_float_average():
    method = SAR()
    method.ema = None
    method.update_ema(0.5)
    assert method.ema == 0.5
    method.update_ema(0.3)
    assert method.ema == 0.9 * 0.5 + (1 - 0.9) * 0.3  # exactly the reference's float arithmetic
    assert method.ema == pytest.approx(0.48)


def test_recovery_fires_when_the_ema_falls_below_the_threshold_and_resets_exactly():
    model, x = _tiny()
    with torch.no_grad():
        source_logits = model(x)
    probe = _sar(_tiny()[0], reset_constant_em=0.0)
    probe.forward(x)
    ema = probe.ema  # the first batch's sharpness-aware loss
    assert ema == pytest.approx(float(_hand_step(*_tiny())["loss2"]), rel=1e-6)

    at = _sar(_tiny()[0], reset_constant_em=ema)  # ema < ema is false: no recovery
    at.forward(x)
    assert at.recoveries == 0 and at.ema == ema and at.optimizer.state_dict()["state"]

    method = _sar(model, reset_constant_em=math.nextafter(ema, math.inf))
    w0 = model[1].weight.detach().clone()
    logits = method.forward(x)
    assert method.recoveries == 1 and method.ema is None
    assert torch.equal(model[1].weight, w0)  # back to the source, bit for bit
    assert not method.optimizer.state_dict()["state"]  # momentum gone too (MD keeps it, see sar.py)
    torch.testing.assert_close(logits, source_logits, rtol=0, atol=1e-6)  # still the pre-step prediction
    assert method.row_extra() == {"sar_recoveries": 1}


# -- which layers train -----------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(4)


class _Toy(nn.Module):
    """Names of a ResNet (layer3, layer4) and a ViT (blocks.0-11, final norm) in one module."""

    def __init__(self):
        super().__init__()
        self.layer3 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.layer4 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
        self.blocks = nn.Sequential(*[_Block() for _ in range(12)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10)


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "Normalized"])
def test_top_layers_are_left_out_as_the_reference(wrap):
    model = Normalized(_Toy(), (0.5,) * 3, (0.5,) * 3) if wrap else _Toy()
    method = SAR()
    method.setup(model)
    prefix = "net." if wrap else ""
    expected = [f"{prefix}layer3.1"] + [f"{prefix}blocks.{i}.norm1" for i in range(9)]
    assert [name for name, _ in method.adapted_layers] == expected
    net = model.net if wrap else model
    assert isinstance(net.layer4[1], GradTestBatchNorm)  # still test-batch statistics, just not trained
    frozen = [net.layer4[1].weight, net.layer4[2].weight, net.blocks[9].norm1.weight, net.norm.weight]
    assert not any(p.requires_grad for p in frozen)
    assert len(method.params) == 2 * len(expected)


# -- reset, non-finite state, batch of one, Run ----------------------------------------------------------


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def test_reset_restores_everything_bit_for_bit():
    method = SAR(lr=0.05, e0_factor=1.0, reset_constant_em=0.0)  # E < ln K: every non-uniform sample
    method.setup(random_resnet20(0).eval())
    state0 = {k: v.clone() for k, v in method.model.state_dict().items()}
    first = [method.forward(x) for x in _batches()]
    assert method.ema is not None and method.optimizer.state_dict()["state"]
    assert any(not torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())  # it adapted
    method.reset()
    assert all(torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())
    assert method.ema is None
    assert method.optimizer.state_dict() == OPTIMIZERS["sgd"](method.params, method.hp).state_dict()
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_parameters_are_reported_and_reset():
    method = SAR(e0_factor=1.0)
    method.setup(random_resnet20(0).eval())
    snapshot = [p.clone() for p in method.params]
    assert not method.diverged()
    with torch.no_grad():
        method.params[0][0] = float("nan")
    method.forward(_batches(1)[0])
    assert method.ema is None  # NaN entropies are never reliable: the EMA takes no NaN
    assert method.diverged()
    method.reset()
    assert not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, method.params))
    assert torch.isfinite(method.forward(_batches(1)[0])).all()


def test_batch_of_one_image():
    """Batch size 1: the filters see the one sample; BN conv layers normalize with its spatial
    statistics; SAR steps when that sample is reliable, else only momentum would move (none yet)."""
    x = _batches(1, size=1)[0]
    for e0_factor, moves in ((10.0, True), (0.0, False)):
        method = SAR(e0_factor=e0_factor, reset_constant_em=0.0)
        method.setup(random_resnet20(0).eval())
        before = [p.clone() for p in method.params]
        assert method.forward(x).shape == (1, 10)
        changed = any(not torch.equal(a, b) for a, b in zip(before, method.params))
        assert changed is moves
        assert (method.ema is not None) is moves


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="sar", n_examples=400, domains=["fog", "gaussian_noise"])
               ).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
    assert all(isinstance(r["extra"]["sar_recoveries"], int) for r in rows)
