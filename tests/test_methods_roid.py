"""roid: the loss weights, the soft likelihood ratio and the prior correction hand-computed on tiny batches,
the view against torchvision's pipeline, one step = Adam then ensembling with the source, exact reset,
non-finite reset, batch size 1, and a run through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import random_resnet20
from tta.methods.losses import symmetric_cross_entropy
from tta.methods.roid import ROID, prior_correction, roid_view, roid_weights, soft_likelihood_ratio
from tta.runner import Run, RunConfig


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def _setup(method, seed: int = 0):
    method.setup(random_resnet20(seed).eval())
    return method


ROWS = [[2.0, 0.0, -1.0], [0.1, 0.2, 0.0], [-1.0, 3.0, 0.5], [0.0, 0.0, 2.5]]


def test_weights_by_hand():
    logits = torch.tensor(ROWS, dtype=torch.float64)
    p_bar = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    probs = [_softmax(r) for r in ROWS]
    cos = [sum(a * b for a, b in zip(p, p_bar.tolist())) / math.sqrt(sum(a * a for a in p))
           / math.sqrt(sum(b * b for b in p_bar.tolist())) for p in probs]
    div = [1 - c for c in cos]
    div = [(d - min(div)) / (max(div) - min(div)) for d in div]
    cert = [sum(q * math.log(q) for q in p) for p in probs]  # -entropy
    cert = [(c - min(cert)) / (max(cert) - min(cert)) for c in cert]
    dropped = [d < sum(div) / 4 for d in div]
    expected = [0.0 if drop else math.exp(d * c * 3) for d, c, drop in zip(div, cert, dropped)]
    weights, mask = roid_weights(logits, p_bar, 1 / 3)
    assert mask.tolist() == dropped and 0 < sum(dropped) < 4
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_soft_likelihood_ratio_and_symmetric_cross_entropy_by_hand():
    rows = [[6.0, 0.0, 0.0], [0.3, 0.1, -0.2]]
    logits = torch.tensor(rows, dtype=torch.float64)
    expected = []
    for r in rows:
        p = [min(v, 0.99) for v in _softmax(r)]  # the first row's top class is clipped to 0.99
        expected.append(-sum(q * math.log(q / (1 - q) + 1e-5) for q in p))
    assert _softmax(rows[0])[0] > 0.99
    torch.testing.assert_close(soft_likelihood_ratio(logits), torch.tensor(expected, dtype=torch.float64))
    a, z = rows
    pa, pz = _softmax(a), _softmax(z)
    sce = (-0.5 * sum(q * math.log(v) for q, v in zip(pz, pa)) - 0.5 * sum(v * math.log(q) for q, v in zip(pz, pa)))
    got = symmetric_cross_entropy(torch.tensor([a], dtype=torch.float64), torch.tensor([z], dtype=torch.float64))
    assert float(got) == pytest.approx(sce, rel=1e-12)


def test_prior_correction_by_hand():
    rows = [[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]]
    probs = [_softmax(r) for r in rows]
    prior = [(a + b) / 2 for a, b in zip(*probs)]
    s = max(1 / 2, 1 / 3) / max(prior)
    corrected = [(p + s) / (1 + 3 * s) for p in prior]
    expected = [[v * c for v, c in zip(r, corrected)] for r in rows]
    got = prior_correction(torch.tensor(rows, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_view_equals_torchvision_pipeline_with_the_same_draws():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode, RandomAffine

    from tta.methods.augmentations import COTTA_JITTER, _colour_op

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for seed in range(4):
        torch.manual_seed(seed)  # the reference's draws: torchvision's from the global generator
        order = torch.randperm(5).tolist()
        y = x.clamp(0, 1)
        for op in order:
            factor = torch.tensor(1.0).uniform_(*COTTA_JITTER[op]).item()
            y = _colour_op(op, y, torch.full((4,), factor))
        y = tvf.pad(y, 16, padding_mode="reflect")
        angle, translate, scale, shear = RandomAffine.get_params((-15.0, 15.0), (1 / 16, 1 / 16), (0.9, 1.1), None,
                                                                 [64, 64])
        y = tvf.affine(y, angle, list(translate), scale, list(shear), InterpolationMode.BILINEAR, fill=0)
        y = tvf.center_crop(y, 32)
        if torch.rand(1) < 0.5:
            y = tvf.hflip(y)
        ours = roid_view(x, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, y.clamp(0, 1), rtol=0, atol=2e-5)


def test_step_is_adam_then_ensembling_with_the_source():
    method = _setup(ROID(use_consistency=False, momentum_src=0.9))
    probe = copy.deepcopy(method.model)
    params = [p for p in probe.parameters() if p.requires_grad]
    source = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    x = _batches(1)[0]
    logits = probe(x)
    weights, dropped = roid_weights(logits, torch.full((10,), 0.1), 1 / 3)
    ((soft_likelihood_ratio(logits) * weights)[~dropped].sum() / 8).backward()
    optimizer.step()
    with torch.no_grad():
        for p, s in zip(params, source):
            p.copy_(0.9 * p + 0.1 * s)
    returned = method.forward(x)
    torch.testing.assert_close(returned, prior_correction(logits.detach()), rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(method.params, params))
    assert not all(torch.equal(a, s) for a, s in zip(method.params, source))
    expected_probs = 0.9 * torch.full((10,), 0.1) + 0.1 * logits.detach().softmax(1).mean(0)
    assert torch.equal(method.class_probs, expected_probs)


def test_momentum_zero_returns_to_the_source_and_one_is_plain_adam():
    x = _batches(1)[0]
    back = _setup(ROID(momentum_src=0.0))
    source = [p.detach().clone() for p in back.params]
    back.forward(x)
    assert all(torch.equal(a, s) for a, s in zip(back.params, source))
    plain = _setup(ROID(momentum_src=1.0))
    plain.forward(x)
    assert not all(torch.equal(a, s) for a, s in zip(plain.params, source))


def test_reset_is_exact_including_the_moving_average_and_the_views():
    batches = _batches(4)
    method = _setup(ROID(seed=7))
    first = [method.forward(x) for x in batches]
    assert not torch.equal(method.class_probs, torch.full((10,), 0.1))
    method.reset()
    assert method.class_probs is None
    assert all(torch.equal(a, s) for a, s in zip(method.params, method.source))
    again = [method.forward(x) for x in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    fresh = _setup(ROID(seed=7))
    assert all(torch.equal(a, fresh.forward(x)) for a, x in zip(first, batches))


def test_nonfinite_parameters_are_reported_and_reset():
    method = _setup(ROID())
    method.forward(_batches(1)[0])
    assert not method.diverged()
    with torch.no_grad():
        method.params[0][0] = float("nan")
    assert method.diverged()
    method.reset()
    assert not method.diverged()
    assert all(torch.equal(a, s) for a, s in zip(method.params, method.source))


def test_batch_of_one_predicts_without_a_step_with_the_prior_correction():
    method = _setup(ROID())
    before = [p.detach().clone() for p in method.params]
    x = _batches(1, size=1)[0]
    with torch.no_grad():
        logits = method.model(x)
    out = method.forward(x)
    p = logits.softmax(1)[0]
    s = 1.0 / p.max()
    torch.testing.assert_close(out, logits * ((p + s) / (1 + 10 * s)), rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(method.params, before))
    assert method.class_probs is None and method._last_loss is None


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="roid", n_examples=400,
                         domains=["fog", "gaussian_noise"])).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
