"""t3a: the prototype update by hand, the support filter, the method on a real network against its
definition, exact reset, non-finite reset, batch size 1, refusals, a run through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import random_resnet20
from tta.errors import UserError
from tta.methods.t3a import T3A, prototype_logits, select_supports
from tta.methods.tent import softmax_entropy
from tta.models.split import split_classifier
from tta.runner import Run, RunConfig


def test_select_supports_keeps_the_k_lowest_entropy_members_of_each_class():
    entropy = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2, 0.7])
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    # class 0: members 1 (0.1), 4 (0.2), 5 (0.7); class 1: 3 (0.3), 0 (0.5), 2 (0.9)
    assert select_supports(entropy, labels, 2).tolist() == [1, 4, 3, 0]
    assert select_supports(entropy, labels, 1).tolist() == [1, 3]
    assert select_supports(entropy, labels, -1).tolist() == [1, 4, 5, 3, 0, 2]
    assert select_supports(torch.tensor([0.4, 0.4, 0.1]), torch.tensor([0, 0, 0]), 2).tolist() == [2, 0]  # ties


def test_prototype_update_by_hand():
    # two classes in 2-d; supports: class 0 = {(2, 0), (1, 1)}, class 1 = {(0, 3)}
    supports = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # c_0 = (1, 0) + (1, 1)/sqrt(2) = (1 + r, r), r = 1/sqrt(2); c_1 = (0, 1)
    r = 1 / math.sqrt(2)
    norm0 = math.sqrt((1 + r) ** 2 + r ** 2)
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    expected = [[(1 * (1 + r) + 2 * r) / norm0, 2.0]]  # z . c_k / ||c_k||, z itself not normalized
    torch.testing.assert_close(prototype_logits(z, supports, onehot), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-14, atol=0)


def _setup(**hp):
    method = T3A(**hp)
    method.setup(random_resnet20(0).eval())
    return method


def _batches(n=3, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def test_warm_up_supports_are_the_classifier_weights():
    method = _setup()
    w, b = method.classifier.weight, method.classifier.bias
    assert torch.equal(method.supports, w) and method.supports.data_ptr() != w.data_ptr()
    logits = w @ w.t() + b
    assert torch.equal(method.labels, F.one_hot(logits.argmax(1), 10).float())
    assert torch.equal(method.entropy, softmax_entropy(logits))


def test_each_batch_joins_the_supports_and_is_predicted_with_the_updated_prototypes():
    method = _setup(filter_K=3)
    probe = copy.deepcopy(method.model)
    features, classifier = split_classifier(probe)
    supports, labels, entropy = method.supports, method.labels, method.entropy
    with torch.inference_mode():
        for x in _batches():
            out = method(x)
            z = features(x)
            p = classifier(z)
            supports = torch.cat([supports, z])
            labels = torch.cat([labels, F.one_hot(p.argmax(1), 10).float()])
            entropy = torch.cat([entropy, softmax_entropy(p)])
            keep = []
            for k in range(10):  # per class, its 3 lowest-entropy members
                members = [i for i in range(len(entropy)) if int(labels[i].argmax()) == k]
                keep += sorted(members, key=lambda i: float(entropy[i]))[:3]
            supports, labels, entropy = supports[keep], labels[keep], entropy[keep]
            prototypes = torch.stack([F.normalize(supports[labels[:, k] == 1], dim=1).sum(0) for k in range(10)], 1)
            torch.testing.assert_close(out, z @ F.normalize(prototypes, dim=0), rtol=1e-5, atol=1e-6)
            assert torch.equal(method.entropy, entropy)
            assert max(int(c) for c in labels.sum(0)) <= 3
    assert all(torch.equal(a, b) for a, b in zip(method.model.state_dict().values(), probe.state_dict().values()))


def test_reset_is_exact():
    method = _setup(filter_K=5)
    warmup = [t.clone() for t in (method.supports, method.labels, method.entropy)]
    with torch.inference_mode():
        first = [method(x) for x in _batches()]
    assert method.supports.shape[0] > warmup[0].shape[0]
    method.reset()
    assert all(torch.equal(a, b) for a, b in zip(warmup, (method.supports, method.labels, method.entropy)))
    with torch.inference_mode():
        again = [method(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_supports_are_reported_and_reset():
    method = _setup()
    assert not method.diverged()
    with torch.inference_mode():
        method(torch.full((4, 3, 16, 16), float("nan")))
    assert method.diverged()
    method.reset()
    assert not method.diverged() and method.supports.shape[0] == 10
    with torch.inference_mode():
        assert torch.isfinite(method(_batches(1)[0])).all()


def test_batch_of_one_image_joins_the_supports():
    method = _setup(filter_K=-1)
    with torch.inference_mode():
        out = method(_batches(1, size=1)[0])
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    assert method.supports.shape[0] == 11  # the 10 warm-up rows and the one image (-1: no filter)


def test_refusals_are_one_line():
    with pytest.raises(UserError, match="^method 't3a': filter_K must be a positive number"):
        T3A(filter_K=0)
    with pytest.raises(UserError, match="^method 't3a' needs a feature extractor / classifier split") as info:
        T3A().setup(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    assert "\n" not in str(info.value)


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="t3a", n_examples=400, domains=["fog", "gaussian_noise"])
               ).execute(store=None)
    assert [r["n"] for r in rows] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
    assert all(10 < r["extra"]["t3a_supports"] <= 10 * 100 + 10 for r in rows)
