"""rotta: memory insertion and eviction by hand (class balance, timeliness, uncertainty), robust BN update,
the update schedule and its loss by hand, exact reset (memory bank included), non-finite reset, batch size 1,
a run through ``Run``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import random_resnet20
from tta.methods.rotta import CategoryBalancedMemory, RobustBatchNorm, RoTTA, timeliness_weights
from tta.runner import Run, RunConfig


def _sig(a: float) -> float:
    return 1 / (1 + math.exp(-a))


def _contents(memory):
    return [[(float(item.image), memory.age(item)) for item in items] for items in memory.classes]


def test_memory_insertion_and_eviction_within_a_full_class_by_hand():
    m = CategoryBalancedMemory(capacity=4, num_classes=2)  # two per class
    m.add(torch.tensor(0.0), 0, 0.5)
    m.add(torch.tensor(1.0), 0, 0.1)
    assert _contents(m) == [[(0.0, 2), (1.0, 1)], []]  # the new image ages too
    # class 0 is at its share: its highest score, image 0 (age 2, u 0.5), beats the newcomer's and goes
    assert _sig(2 / 4) + 0.5 / math.log(2) > _sig(0) + 0.2 / math.log(2)
    m.add(torch.tensor(2.0), 0, 0.2)
    assert _contents(m) == [[(1.0, 2), (2.0, 1)], []]
    # a very uncertain newcomer scores above every stored image of its class: it is dropped
    assert _sig(0) + 1.0 / math.log(2) > max(_sig(2 / 4) + 0.1 / math.log(2), _sig(1 / 4) + 0.2 / math.log(2))
    m.add(torch.tensor(3.0), 0, 1.0)
    assert _contents(m) == [[(1.0, 3), (2.0, 2)], []]
    m.add(torch.tensor(4.0), 1, 0.3)
    assert _contents(m) == [[(1.0, 4), (2.0, 3)], [(4.0, 1)]] and len(m) == 3


def test_memory_full_evicts_from_the_majority_classes():
    m = CategoryBalancedMemory(capacity=4, num_classes=3)  # share 4/3: a class below it may hold 2
    for image, label, u in ((0.0, 0, 0.1), (1.0, 0, 0.1), (2.0, 1, 0.9), (3.0, 1, 0.1)):
        m.add(torch.tensor(image), label, u)
    assert _contents(m) == [[(0.0, 4), (1.0, 3)], [(2.0, 2), (3.0, 1)], []]
    # full; class 2 is under its share -> evict the highest score of the majority classes 0 and 1 (2 each):
    # image 2 (age 2, u 0.9) scores sig(2/4) + 0.9/ln 3 above image 0's sig(4/4) + 0.1/ln 3
    assert _sig(2 / 4) + 0.9 / math.log(3) > _sig(4 / 4) + 0.1 / math.log(3)
    m.add(torch.tensor(5.0), 2, 0.2)
    assert _contents(m) == [[(0.0, 5), (1.0, 4)], [(3.0, 2)], [(5.0, 1)]]
    images, ages = m.batch()
    assert [float(i) for i in images] == [0.0, 1.0, 3.0, 5.0] and ages == [5 / 4, 4 / 4, 2 / 4, 1 / 4]


def test_timeliness_weights_by_hand():
    torch.testing.assert_close(timeliness_weights([0.0, 1.0]), torch.tensor([0.5, math.exp(-1) / (1 + math.exp(-1))]))


def test_robust_batchnorm_moves_its_statistics_while_updating_only():
    bn = torch.nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    layer = RobustBatchNorm(bn, 0.05)
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    out = layer(x)  # not updating: the stored (source) statistics
    torch.testing.assert_close(out, (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps))
    assert torch.equal(layer.global_mean, bn.running_mean)
    layer.updating = True
    mean_b = x.mean(dim=(0, 2, 3))
    var_b = x.var(dim=(0, 2, 3), unbiased=False)
    expected_mean = 0.95 * torch.tensor([1.0, -1.0]) + 0.05 * mean_b
    expected_var = 0.95 * torch.tensor([2.0, 0.5]) + 0.05 * var_b
    out = layer(x)
    torch.testing.assert_close(layer.global_mean, expected_mean)
    torch.testing.assert_close(layer.global_var, expected_var)
    torch.testing.assert_close(out, (x - expected_mean.view(1, -1, 1, 1)) / torch.sqrt(
        expected_var.view(1, -1, 1, 1) + bn.eps))
    assert torch.equal(bn.running_mean, torch.tensor([1.0, -1.0]))  # the source statistics are kept


def _setup(method):
    method.setup(random_resnet20(0).eval())
    return method


def _batches(n: int = 3, size: int = 40, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def test_updates_every_n_images_with_the_teacher_prediction_before_them():
    method = _setup(RoTTA(update_every=16, strong_augment=False, seed=0))
    teacher = copy.deepcopy(method.teacher)
    x = _batches(1)[0]
    with torch.no_grad():
        expected = teacher(x)
    out = method.forward(x)
    assert torch.equal(out, expected)  # predicted before the updates
    assert method.updates == 2 and method.seen == 40  # after images 16 and 32
    assert not all(torch.equal(a, b) for a, b in zip(method.teacher.parameters(), teacher.parameters()))


def test_reset_restores_models_statistics_optimizer_memory_and_generator():
    method = _setup(RoTTA(update_every=16, lr=0.01, seed=3))
    state0 = [t.clone() for t in method.touched_tensors()]
    optimizer0 = copy.deepcopy(method.optimizer.state_dict())
    generator0 = method.generator.get_state()
    first = [method.forward(x) for x in _batches()]
    assert method.updates == 7 and len(method.memory) > 0
    assert any(not torch.equal(a, b) for a, b in zip(method.touched_tensors(), state0))
    method.reset()
    assert all(torch.equal(a, b) for a, b in zip(method.touched_tensors(), state0))
    assert method.optimizer.state_dict() == optimizer0 and torch.equal(method.generator.get_state(), generator0)
    assert method.memory is None and method.seen == 0
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_state_is_detected_and_reset():
    method = _setup(RoTTA(update_every=16, seed=0))
    state0 = [t.clone() for t in method.touched_tensors()]
    method.forward(_batches(1)[0])
    assert not method.diverged()
    with torch.no_grad():
        method.robust[0].global_var[0] = float("inf")
    assert method.diverged()
    method.reset()
    assert not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(method.touched_tensors(), state0))


def test_batch_of_one_image_fills_the_memory_and_updates_on_it():
    method = _setup(RoTTA(update_every=4, seed=0))
    before = [p.detach().clone() for p in method.params]
    for x in _batches(4, size=1):
        assert method.forward(x).shape == (1, 10)
    assert method.updates == 1 and 1 <= len(method.memory) <= 4
    assert any(not torch.equal(a, b) for a, b in zip(before, method.params))


@pytest.mark.parametrize("hparams", [{}, {"strong_augment": False}])
def test_runs_through_run_on_the_smoke_protocol(hparams):
    rows = Run(RunConfig(protocol="smoke", method="rotta", hparams=hparams, n_examples=200,
                         domains=["fog", "gaussian_noise"])).execute(store=None)
    assert [r["n"] for r in rows] == [200, 200]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
