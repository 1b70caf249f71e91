"""shot_im: SHOT's information-maximization loss by hand, the step (Nesterov SGD on every feature-extractor
parameter, classifier frozen), exact reset, non-finite reset, batch size 1, refusals, a run through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import random_resnet20
from tta.errors import UserError
from tta.methods.shot_im import SHOTIM, information_maximization
from tta.runner import Run, RunConfig


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_information_maximization_by_hand():
    rows = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]
    p = [_softmax(r) for r in rows]
    eps = 1e-5
    entropy = sum(-q * math.log(q + eps) for row in p for q in row) / 2
    mean = [(p[0][k] + p[1][k]) / 2 for k in range(3)]
    diversity = sum(-m * math.log(m + eps) for m in mean)
    loss = information_maximization(torch.tensor(rows, dtype=torch.float64))
    assert float(loss) == pytest.approx(entropy - diversity, rel=1e-12)
    # one image: its diversity is its own entropy, the loss vanishes
    assert abs(float(information_maximization(torch.tensor(rows[:1], dtype=torch.float64)))) < 1e-12


def _batches(n=3, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def _setup(**hp):
    method = SHOTIM(**hp)
    method.setup(random_resnet20(0).eval())
    return method


def test_step_is_nesterov_sgd_of_the_feature_extractor_with_the_classifier_frozen():
    method = _setup()
    head = method.model.net.linear
    assert all(p is not head.weight and p is not head.bias for p in method.params)
    assert len(method.params) == len(list(method.model.parameters())) - 2
    probe = copy.deepcopy(method.model)
    probe_params = [p for name, p in probe.named_parameters() if not name.startswith("net.linear.")]
    optimizer = torch.optim.SGD(probe_params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-3)
    head_before = head.weight.clone()
    for x in _batches(2):
        logits = probe(x)
        optimizer.zero_grad()
        information_maximization(logits).backward()
        optimizer.step()
        returned = method.forward(x)
        assert torch.equal(returned, logits.detach())  # the prediction is the forward before the step
    assert all(torch.equal(a, b) for a, b in zip(method.params, probe_params))
    assert torch.equal(head.weight, head_before) and head.weight.grad is None


def test_reset_is_exact():
    method = _setup()
    snapshot = [p.clone() for p in method.params]
    first = [method.forward(x) for x in _batches()]
    assert any(not torch.equal(a, b) for a, b in zip(snapshot, method.params))
    method.reset()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, method.params))
    assert method.optimizer.state_dict()["state"] == {}
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_parameters_are_reported_and_reset():
    method = _setup()
    snapshot = [p.clone() for p in method.params]
    with torch.no_grad():
        method.params[0][0] = float("nan")
    method.forward(_batches(1)[0])
    assert method.diverged()
    method.reset()
    assert not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, method.params))
    assert torch.isfinite(method.forward(_batches(1)[0])).all()


def test_batch_of_one_image_is_predicted_without_a_step():
    method = _setup()
    before = [p.clone() for p in method.params]
    out = method.forward(_batches(1, size=1)[0])
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    assert all(torch.equal(a, b) for a, b in zip(before, method.params))


def test_refusals_are_one_line():
    with pytest.raises(UserError, match="^method 'shot_im': Nesterov SGD needs momentum > 0"):
        SHOTIM(momentum=0.0)
    with pytest.raises(UserError, match="^method 'shot_im' needs a feature extractor / classifier split") as info:
        SHOTIM().setup(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    assert "\n" not in str(info.value)


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="shot_im", n_examples=400, domains=["fog", "gaussian_noise"])
               ).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
