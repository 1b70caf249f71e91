"""rpl, conjugate_pl and rdumb: defining steps on tiny batches (hand-computed), rdumb's reset after
exactly N updates, exact reset, non-finite reset, batch size 1, and runs through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import random_resnet20
from tta.errors import UserError
from tta.methods.affine_adapt import OPTIMIZERS
from tta.methods.conjugate_pl import ConjugatePL, conjugate_ce_loss
from tta.methods.eta import ETA
from tta.methods.rdumb import RDumb
from tta.methods.rpl import RPL, generalized_cross_entropy
from tta.methods.tent import softmax_entropy
from tta.runner import Run, RunConfig


def _model(seed: int = 0):
    return random_resnet20(seed).eval()


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def _setup(method, seed: int = 0):
    method.setup(_model(seed))
    return method


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# -- rpl: generalized cross-entropy on hard pseudo-labels -------------------------------------------


def test_gce_value_and_gradient_by_hand():
    rows = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
    logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    q = 0.8
    loss = RPL(q=q).loss(logits)  # labels: the arg-max of each row (0 and 1)
    probs = [_softmax(r) for r in rows]
    p_y = [probs[0][0], probs[1][1]]
    assert float(loss.detach()) == pytest.approx(sum((1 - p ** q) / q for p in p_y) / 2, rel=1e-12)
    # d/dz_c (1 - p_y^q)/q = -p_y^q (1[c = y] - p_c), averaged over the batch; no gradient through the label
    loss.backward()
    expected = [[-p_y[i] ** q * ((c == y) - probs[i][c]) / 2 for c in range(3)] for i, y in enumerate((0, 1))]
    torch.testing.assert_close(logits.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_gce_limits_and_explicit_targets():
    logits = torch.tensor([[1.0, 3.0, 0.0]])
    p = torch.tensor(_softmax([1.0, 3.0, 0.0]))
    torch.testing.assert_close(generalized_cross_entropy(logits, torch.tensor([0]), 1.0), 1 - p[[0]])
    # q -> 0 approaches the cross-entropy -log p_y
    assert float(generalized_cross_entropy(logits.double(), torch.tensor([2]), 1e-6)) == pytest.approx(
        -math.log(float(p[2])), rel=1e-5)


def test_rpl_step_is_adam_on_the_gce_of_the_normalization_affine_parameters():
    method = _setup(RPL())
    probe = copy.deepcopy(method.model)
    probe_params = [p for m in _norm_layers(probe) for p in (m.weight, m.bias)]
    optimizer = torch.optim.Adam(probe_params, lr=1e-3, betas=(0.9, 0.999))
    x = _batches(1)[0]
    logits = probe(x)
    expected_loss = ((1 - logits.softmax(1).max(1).values ** 0.8) / 0.8).mean()
    expected_loss.backward()
    optimizer.step()
    returned = method.forward(x)
    assert torch.equal(returned, logits.detach())  # the prediction is the pre-step forward
    assert all(torch.equal(a, b) for a, b in zip(method.params, probe_params))


def _norm_layers(model):
    from tta.methods.affine_adapt import GradTestBatchNorm

    return [m for m in model.modules() if isinstance(m, GradTestBatchNorm)]


# -- conjugate_pl ---------------------------------------------------------------------------------------


def test_conjugate_loss_by_hand_is_the_temperature_scaled_entropy():
    rows = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
    t = 2.0
    expected = []
    for r in rows:
        h = [v / t for v in r]
        lse = math.log(sum(math.exp(v) for v in h))
        expected.append(lse - sum(p * v for p, v in zip(_softmax(h), h)))
    logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    values = conjugate_ce_loss(logits, t)
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # for the cross-entropy the conjugate loss is the entropy of softmax(z / T), gradient included
    # (the pseudo-label softmax(z / T) is not detached)
    entropy = softmax_entropy(logits / t)
    torch.testing.assert_close(values, entropy, rtol=1e-12, atol=1e-15)
    (g_conj,) = torch.autograd.grad(values.sum(), logits)
    (g_ent,) = torch.autograd.grad(entropy.sum(), logits)
    torch.testing.assert_close(g_conj, g_ent, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ConjugatePL(temperature=t).loss(logits), values.mean())


def test_conjugate_step_is_nesterov_sgd_and_the_prediction_comes_after_it():
    method = _setup(ConjugatePL(temperature=1.5))
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in method.optimizer.param_groups)
    probe = copy.deepcopy(method.model)
    probe_params = [p for m in _norm_layers(probe) for p in (m.weight, m.bias)]
    optimizer = torch.optim.SGD(probe_params, lr=1e-3, momentum=0.9, nesterov=True)
    for x in _batches(2):  # two steps: the second uses the momentum buffer
        h = probe(x) / 1.5
        p = h.softmax(1)  # before the logsumexp, as the authors: the same summation order of h's gradient
        loss = (h.logsumexp(1) - (p * h).sum(1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            after = probe(x)
        assert torch.equal(method.forward(x), after)
        assert all(torch.equal(a, b) for a, b in zip(method.params, probe_params))
    # predict_after_step=false: the logits of the forward the loss was taken on
    before_method = _setup(ConjugatePL(predict_after_step=False))
    x = _batches(1)[0]
    with torch.no_grad():
        source_logits = before_method.model(x)
    assert torch.equal(before_method.forward(x), source_logits)


def test_conjugate_nesterov_without_momentum_refuses_and_adam_works():
    with pytest.raises(UserError, match="momentum > 0"):
        ConjugatePL(momentum=0.0)
    method = _setup(ConjugatePL(optimizer="adam"))
    assert isinstance(method.optimizer, torch.optim.Adam)
    method.forward(_batches(1)[0])


# -- rdumb ------------------------------------------------------------------------------------------------


def test_rdumb_is_eta_until_the_nth_update_then_the_setup_state_bit_for_bit():
    n = 3
    rdumb, eta, fresh = _setup(RDumb(reset_every=n, lr=0.01)), _setup(ETA(lr=0.01)), _setup(ETA(lr=0.01))
    params0 = [p.clone() for p in rdumb.params]
    batches = _batches(5)
    for i, x in enumerate(batches[:n]):
        # the batch completing the n-th update is still predicted by the adapted model
        assert torch.equal(rdumb.forward(x), eta.forward(x))
        if i < n - 1:
            assert rdumb.updates == i + 1
            assert any(not torch.equal(a, b) for a, b in zip(params0, rdumb.params))
    # ...and right after it everything is as at setup
    assert rdumb.updates == 0
    assert all(torch.equal(a, b) for a, b in zip(params0, rdumb.params))
    assert rdumb.redundancy.average is None
    assert rdumb.optimizer.state_dict() == OPTIMIZERS["adam"](rdumb.params, rdumb.hp).state_dict()
    # the following batches are those of a fresh ETA
    for x in batches[n:]:
        assert torch.equal(rdumb.forward(x), fresh.forward(x))


def test_rdumb_counts_an_update_even_when_eta_selects_nothing():
    """MD increments ``performed_updates`` after every forward_and_adapt, also when EATA skipped its step."""
    method = _setup(RDumb(e0_factor=0.0, reset_every=4))  # E < 0 never holds: no optimizer step
    for i, x in enumerate(_batches(3)):
        method.forward(x)
        assert method.updates == i + 1
    assert not method.optimizer.state_dict()["state"]


def test_rdumb_counts_steps_and_refuses_a_period_that_splits_a_batch():
    method = _setup(RDumb(steps=2, reset_every=4, lr=0.01))
    method.forward(_batches(1)[0])
    assert method.updates == 2
    method.forward(_batches(1)[0])
    assert method.updates == 0  # reset after the 4th step
    with pytest.raises(UserError, match="multiple of steps"):
        RDumb(steps=3, reset_every=1000)


# -- exact reset, non-finite reset, batch size 1 --------------------------------------------------------


METHODS = {
    "rpl": lambda: RPL(lr=0.01),
    "conjugate_pl": lambda: ConjugatePL(lr=0.01),
    "rdumb": lambda: RDumb(lr=0.01, reset_every=1000),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reset_restores_everything_bit_for_bit(name):
    method = _setup(METHODS[name]())
    state0 = {k: v.clone() for k, v in method.model.state_dict().items()}
    optimizer0 = copy.deepcopy(method.optimizer.state_dict())
    first = [method.forward(x) for x in _batches()]
    assert method.optimizer.state_dict()["state"]  # it took steps
    assert any(not torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())
    method.reset()
    assert all(torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())
    assert method.optimizer.state_dict() == optimizer0
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_non_finite_state_is_detected_and_reset(name):
    method = _setup(METHODS[name]())
    params0 = [p.clone() for p in method.params]
    method.forward(_batches(1)[0])
    assert not method.diverged()
    with torch.no_grad():
        method.params[0][0] = float("nan")
    assert method.diverged()
    method.reset()  # what the runner does on divergence
    assert not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(params0, method.params))


@pytest.mark.parametrize("name", ["rpl", "conjugate_pl"])
def test_a_non_finite_loss_diverges(name):
    method = _setup(METHODS[name]())
    x = _batches(1)[0]
    x[0, 0, 0, 0] = float("inf")
    method.forward(x)
    assert method.diverged()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batch_of_one_image_adapts_on_its_spatial_statistics(name):
    """Batch size 1: conv layers normalize with the image's spatial statistics and the method takes its step
    on that one image (rdumb: if ETA selects it; E0 = 10 ln K makes it reliable); one batch = one update."""
    method = _setup(RDumb(lr=0.01, e0_factor=10.0) if name == "rdumb" else METHODS[name]())
    before = [p.clone() for p in method.params]
    assert method.forward(_batches(1, size=1)[0]).shape == (1, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.params))
    if name == "rdumb":
        assert method.updates == 1


@pytest.mark.parametrize("name", sorted(METHODS))
def test_group_norm_and_layer_norm_models_adapt_their_affine_parameters(name):
    """No BatchNorm: the GroupNorm and LayerNorm affine parameters are the ones trained (AffineAdaptMethod)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.LayerNorm(8),
                                torch.nn.Linear(8, 10)).eval()
    method = RDumb(lr=0.01, e0_factor=10.0) if name == "rdumb" else METHODS[name]()
    method.setup(model)
    norms = (model[1], model[5])
    assert [id(p) for p in method.params] == [id(p) for m in norms for p in (m.weight, m.bias)]
    before = [p.clone() for p in method.params]
    method.forward(_batches(1)[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, method.params))
    assert not any(p.requires_grad for p in (model[0].weight, model[6].weight))


# -- through the runner (labels never reach a method) -----------------------------------------------------


@pytest.mark.parametrize("method,hparams", [("rpl", {}), ("conjugate_pl", {}), ("rdumb", {"reset_every": 1})])
def test_runs_through_run_on_the_smoke_protocol(method, hparams):
    rows = Run(RunConfig(protocol="smoke", method=method, hparams=hparams, n_examples=400,
                         domains=["fog", "gaussian_noise"])).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
