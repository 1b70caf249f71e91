"""cmf: the filtering step (predict, update with beta and its clips, ensemble) computed by hand after one Adam
step, CMF without process noise = ROID's ensembling bit for bit, exact reset (hidden weights and variance),
non-finite reset, batch size 1, and a run through ``Run``."""

from __future__ import annotations

import copy

import torch

from helpers import random_resnet20
from tta.methods.cmf import CMF
from tta.methods.roid import ROID, prior_correction, roid_weights, soft_likelihood_ratio
from tta.runner import Run, RunConfig


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def _setup(method, seed: int = 0):
    method.setup(random_resnet20(seed).eval())
    return method


def _adam_probe(method, x):
    """The logits and Adam-updated parameters of one plain ROID-loss step (no consistency) on a copy."""
    probe = copy.deepcopy(method.model)
    params = [p for p in probe.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    logits = probe(x)
    weights, dropped = roid_weights(logits, torch.full((10,), 0.1), 1 / 3)
    ((soft_likelihood_ratio(logits) * weights)[~dropped].sum() / x.shape[0]).backward()
    optimizer.step()
    return logits.detach(), [p.detach().clone() for p in params]


def _filter_by_hand(source, adapted, q, alpha=0.99, gamma=0.99):
    var = alpha ** 2 * 0.0 + q
    beta = (1 - q) / (var + 1 - q)
    beta = 0.89 if beta <= 0.89 else (1.0 if beta >= 0.9999 else beta)
    hidden = [alpha * s + (1 - alpha) * s for s in source]
    hidden = [beta * h + (1 - beta) * a for h, a in zip(hidden, adapted)]
    return beta, beta * var, hidden, [gamma * a + (1 - gamma) * h for a, h in zip(adapted, hidden)]


def test_q_scales_with_the_trained_parameter_count():
    method = _setup(CMF())
    assert sum(p.numel() for p in method.params) == 1376
    assert method.noise == 0.005 * (1376 / 38400)


def test_one_step_filters_by_hand():
    for q_hp, expected_beta in ((0.005, 1 - 0.005 * 1376 / 38400), (5.0, 0.89)):  # no clip; clipped at 0.89
        method = _setup(CMF(use_consistency=False, q=q_hp))
        x = _batches(1)[0]
        logits, adapted = _adam_probe(method, x)
        beta, var, hidden, params = _filter_by_hand(method.source, adapted, method.noise)
        out = method.forward(x)
        assert abs(beta - expected_beta) < 1e-12 and method.beta == beta
        assert abs(method.hidden_var - var) < 1e-15
        for got, want in zip(method.hidden, hidden):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
        for got, want in zip(method.params, params):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
        torch.testing.assert_close(out, prior_correction(logits), rtol=0, atol=0)


def test_without_noise_and_prediction_step_cmf_is_roids_ensembling_bit_for_bit():
    batches = _batches(4)
    cmf = _setup(CMF(q=0.0, alpha=1.0, gamma=0.95, seed=3))
    roid = _setup(ROID(momentum_src=0.95, seed=3))
    for x in batches:
        assert torch.equal(cmf.forward(x), roid.forward(x))
    assert cmf.beta == 1.0 and cmf.hidden_var == 0.0
    assert all(torch.equal(h, s) for h, s in zip(cmf.hidden, cmf.source))  # beta = 1: the hidden copy stays
    assert all(torch.equal(a, b) for a, b in zip(cmf.params, roid.params))


def test_reset_is_exact_including_hidden_weights_and_variance():
    batches = _batches(4)
    method = _setup(CMF(seed=5))
    first = [method.forward(x) for x in batches]
    assert method.hidden_var > 0 and not all(torch.equal(h, s) for h, s in zip(method.hidden, method.source))
    method.reset()
    assert method.hidden_var == 0.0 and method.beta is None and method.class_probs is None
    assert all(torch.equal(h, s) for h, s in zip(method.hidden, method.source))
    assert all(torch.equal(a, s) for a, s in zip(method.params, method.source))
    assert all(torch.equal(a, method.forward(x)) for a, x in zip(first, batches))


def test_nonfinite_parameters_are_reported_and_reset():
    method = _setup(CMF())
    method.forward(_batches(1)[0])
    with torch.no_grad():
        method.params[1][0] = float("inf")
    assert method.diverged()
    method.reset()
    assert not method.diverged()


def test_batch_of_one_predicts_without_a_step():
    method = _setup(CMF())
    method.forward(_batches(1)[0])
    state = ([p.detach().clone() for p in method.params], [h.clone() for h in method.hidden], method.hidden_var)
    x = _batches(1, size=1, seed=4)[0]
    with torch.no_grad():
        logits = method.model(x)
    out = method.forward(x)
    torch.testing.assert_close(out, prior_correction(logits), rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(method.params, state[0]))
    assert all(torch.equal(a, b) for a, b in zip(method.hidden, state[1])) and method.hidden_var == state[2]


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="cmf", n_examples=400,
                         domains=["fog", "gaussian_noise"])).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
    assert rows[0]["extra"]["cmf_hidden_var"] > 0
