"""DG training methods on fixture data: real steps, real losses, hand-computed SAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta.training  # noqa: F401 - registers the methods
from tta.data.synthetic_domains import generate_domain
from tta.models import create_model
from tta.registry import TRAINING_METHODS
from tta.training.base import bn_statistics_kept
from tta.training.udim import UDIM


def fixture_minibatches(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One fixed minibatch per source style, 16 x 16 shapes."""
    out = []
    for style in ("solid", "textured", "inverted"):
        images, labels = generate_domain(style, n, seed=3, downsample=2)
        out.append((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels)))
    return out


@pytest.mark.parametrize("name", ["erm", "sam", "udim", "ridg"])
def test_method_steps_give_finite_decreasing_loss(name):
    torch.manual_seed(0)
    model = create_model("smoke_cnn", 10)
    overrides = {"lr": 0.005, **({"warmup_fraction": 0.0} if name == "udim" else {})}
    method = TRAINING_METHODS.get(name)(**overrides)
    method.setup(model, 10, total_steps=12)
    minibatches = fixture_minibatches()
    model.train()
    losses = [method.update(minibatches) for _ in range(12)]
    values = [step["loss"] for step in losses]
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert np.mean(values[-3:]) < 0.8 * np.mean(values[:3]), values
    if name == "udim":
        assert all(step["inconsistency"] > 0 for step in losses)
    with torch.inference_mode():
        model.eval()
        assert method.predict(minibatches[0][0]).shape == (40, 10)


def tiny_problem():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return model, x, y


def loss_grads(weight, bias, x, y):
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ weight.T + bias, y)
    return torch.autograd.grad(loss, (weight, bias))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_update_equals_hand_computed_two_step_update(adaptive):
    model, x, y = tiny_problem()
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    rho, lr, eta = 0.5, 0.1, 0.01
    method = TRAINING_METHODS.get("sam")(rho=rho, lr=lr, optimizer="sgd", momentum=0.0, adaptive=adaptive, eta=eta)
    method.setup(model, 3, total_steps=1)
    method.update([(x, y)])

    gw, gb = loss_grads(w0, b0, x, y)
    if adaptive:  # ASAM: e = rho * T^2 g / ||T g||, T = |w| + eta
        tw, tb = w0.abs() + eta, b0.abs() + eta
        norm = torch.sqrt(((tw * gw) ** 2).sum() + ((tb * gb) ** 2).sum())
        ew, eb = rho * tw ** 2 * gw / norm, rho * tb ** 2 * gb / norm
    else:
        norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        ew, eb = rho * gw / norm, rho * gb / norm
    sharp_gw, sharp_gb = loss_grads(w0 + ew, b0 + eb, x, y)
    torch.testing.assert_close(model[0].weight.detach(), w0 - lr * sharp_gw, rtol=0, atol=1e-6)
    torch.testing.assert_close(model[0].bias.detach(), b0 - lr * sharp_gb, rtol=0, atol=1e-6)
    # the step differs from plain gradient descent (the perturbation matters)
    assert not torch.allclose(model[0].weight.detach(), w0 - lr * gw, atol=1e-5)


def test_sam_updates_batchnorm_statistics_on_the_first_pass_only():
    torch.manual_seed(0)
    model = create_model("smoke_cnn", 10)
    twin = create_model("smoke_cnn", 10)
    twin.load_state_dict(model.state_dict())
    x, y = fixture_minibatches()[0]
    model.train(), twin.train()
    method = TRAINING_METHODS.get("sam")(rho=0.5)
    method.setup(model, 10, total_steps=1)
    method.update([(x, y)])
    with torch.no_grad():
        twin(x)  # exactly one forward in train mode
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(a, b), name


def test_ridg_bank_is_class_mean_rationale_without_autograd_history():
    torch.manual_seed(0)
    model = create_model("smoke_cnn", 10)
    method = TRAINING_METHODS.get("ridg")(lr=0.005)
    method.setup(model, 10, total_steps=2)
    x, y = fixture_minibatches()[0]
    model.train()
    with torch.no_grad(), bn_statistics_kept(model):
        model(x)  # the features the method's first forward will see (same weights, same batch)
        z, w = method.head.features.clone(), method.head.linear.weight.clone()
    expected = (w.unsqueeze(0) * z.unsqueeze(1))[y == 3].mean(0)
    method.update([(x, y)])
    assert not method.bank.requires_grad and method.bank.grad_fn is None
    torch.testing.assert_close(method.bank[3], expected, rtol=1e-5, atol=1e-6)
    assert int(method.seen.sum()) == len(y.unique())
    before = method.bank.clone()
    method.update([(x, y)])
    assert not method.bank.requires_grad and method.bank.grad_fn is None
    # momentum 0.001: the bank moves, by 0.1 % of the way to the new class mean
    assert not torch.equal(method.bank, before)
    assert float((method.bank - before).abs().max()) < 0.01 * float(before.abs().max())


def test_udim_inconsistency_is_zero_for_identical_halves_and_positive_otherwise():
    torch.manual_seed(0)
    features = torch.randn(6, 5)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    same = UDIM.inconsistency(torch.cat([logits[:3], logits[:3]]), torch.cat([features[:3], features[:3]]),
                              torch.cat([y[:3], y[:3]]))
    norms_only = sum(t.square().sum(1).mean() / t.shape[1] for t in (
        ((logits[:3].softmax(1) - F.one_hot(y[:3], 4)).unsqueeze(2) * features[:3].unsqueeze(1)).flatten(1),
        logits[:3].softmax(1) - F.one_hot(y[:3], 4)))
    torch.testing.assert_close(same, norms_only)  # variance term vanishes
    differ = UDIM.inconsistency(logits, features, y)
    assert differ > 0


def test_plugin_training_method_trains_through_the_loop(tmp_path):
    from tta.registry import register_training_method
    from tta.training.base import TrainingMethod, cross_entropy
    from tta.training.loop import TrainConfig, Training

    @register_training_method("test_label_smoothing")
    class LabelSmoothing(TrainingMethod):
        """Out-of-tree example: cross-entropy with label smoothing 0.1."""

        def step(self, x, y):
            loss = F.cross_entropy(self.model(x), y, label_smoothing=0.1)
            self.descend(loss)
            return {"loss": loss.item(), "ce": cross_entropy(self.model(x), y).item()}

    summary = Training(TrainConfig("shapes_dg", "test_label_smoothing", "solid", steps=4, checkpoint_every=2,
                                   batch_size=8, out=str(tmp_path / "run"))).run()
    assert summary["method"] == "test_label_smoothing" and summary["step"] in (2, 4)
    assert (tmp_path / "run" / "best.pt").is_file()
