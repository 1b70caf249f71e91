"""cotta: the step by hand (consistency loss, EMA teacher, seeded stochastic restore), augmentation averaging
below / no averaging above the anchor threshold, per-view statistics of the batched views, the CoTTA views'
draws, exact reset (student, teacher, optimizer, generator), non-finite reset, batch size 1, a run."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import random_resnet20
from tta.methods.augmentations import cotta_augment, cotta_draws
from tta.methods.cotta import CoTTA, ViewBatchNorm, consistency_loss, stochastic_restore_, weights_and_biases
from tta.runner import Run, RunConfig


def _batches(n: int = 3, size: int = 8, seed: int = 1, side: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, side, side, generator=g) for _ in range(n)]


def _setup(method):
    method.setup(random_resnet20(0).eval())
    return method


def test_stochastic_restore_with_a_seeded_mask_by_hand():
    params = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])]
    source = [torch.zeros(4), torch.full((2, 2), -1.0)]
    # seed 3 draws u = [0.0043, 0.1056, 0.2858, 0.0270] for the first tensor, then [[0.4716, 0.0601],
    # [0.7719, 0.7437]] for the second: with p = 0.1 the elements with u < 0.1 return to the source
    stochastic_restore_(params, source, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(params[0], torch.tensor([0.0, 2.0, 3.0, 0.0]))
    assert torch.equal(params[1], torch.tensor([[5.0, -1.0], [7.0, 8.0]]))
    # p = 0 draws nothing and changes nothing
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    stochastic_restore_(params, source, 0.0, g)
    assert torch.equal(g.get_state(), state)


def test_consistency_loss_by_hand():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    pt, log_ps = t.softmax(1), s.log_softmax(1)
    ce = float(-(pt * log_ps).sum())
    assert float(consistency_loss(s, t, False)) == pytest.approx(ce, rel=1e-6)
    back = float(-(s.softmax(1) * t.log_softmax(1)).sum())
    assert float(consistency_loss(s, t, True)) == pytest.approx(0.5 * ce + 0.5 * back, rel=1e-6)


def test_one_step_by_hand_without_augmentation():
    """threshold 0: the teacher predicts x; Adam step on CE(teacher, student); EMA; restore with the seeded mask."""
    method = _setup(CoTTA(threshold=0.0, restore=0.3, lr=0.01, seed=7))
    student, teacher = copy.deepcopy(method.model), copy.deepcopy(method.teacher)
    params = weights_and_biases(student)
    source = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999))
    x = _batches(1)[0]
    with torch.no_grad():
        expected_out = teacher(x)
    loss = -(expected_out.softmax(1) * student(x).log_softmax(1)).sum(1).mean(0)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.copy_(0.999 * t + (1 - 0.999) * s)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p, p0 in zip(params, source):
            mask = (torch.rand(p.shape, generator=g) < 0.3).float()
            p.copy_(p0 * mask + p * (1 - mask))
    out = method.forward(x)
    assert torch.equal(out, expected_out)
    assert all(torch.equal(a, b) for a, b in zip(method.params, params))
    assert all(torch.equal(a, b) for a, b in zip(method.teacher.parameters(), teacher.parameters()))
    assert method.augmented_batches == 0
    # about 30 % of the elements are back at their source values, the others moved
    flat = torch.cat([(p == p0).flatten() for p, p0 in zip(method.params, source)]).float().mean()
    assert 0.28 < float(flat) < 0.45


@pytest.mark.parametrize("per_call", [1, 2, 4])
def test_augmentation_averaging_below_the_threshold_and_none_above(per_call):
    """Views through the teacher one per call (default) or grouped (per-view BN statistics): the same mean."""
    x = _batches(1)[0]
    above = _setup(CoTTA(threshold=0.0, restore=0.0, seed=1))  # confidence < 0 never holds: plain teacher
    with torch.no_grad():
        plain = above.teacher(x)
    assert torch.equal(above.forward(x), plain) and above.augmented_batches == 0
    below = _setup(CoTTA(threshold=1.0, restore=0.0, augmentations=4, views_per_call=per_call, seed=1))  # confidence < 1: augment
    teacher = copy.deepcopy(below.teacher)
    views = cotta_augment(x, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():  # four separate teacher calls of B images, as the reference loops
        expected = torch.stack([teacher(views[i * 8:(i + 1) * 8]) for i in range(4)]).mean(0)
    out = below.forward(x)
    assert below.augmented_batches == 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)
    assert all(layer.views == 1 for layer in below.teacher_norms)


def test_view_batchnorm_normalizes_each_view_with_its_own_statistics():
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5])
    bn.bias.data = torch.tensor([0.0, 1.0, -1.0])
    layer = ViewBatchNorm(bn)
    x = torch.randn(12, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    separate = torch.cat([layer(x[i * 4:(i + 1) * 4]) for i in range(3)])
    layer.views = 3
    torch.testing.assert_close(layer(x), separate, rtol=1e-5, atol=1e-5)
    layer.views = 1
    assert not torch.allclose(layer(x), separate, atol=1e-3)  # pooled statistics differ


def test_cotta_views_draw_in_the_reference_order_and_stay_in_range():
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    views = cotta_augment(x, 3, g)
    assert views.shape == (15, 3, 32, 32) and float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    h = torch.Generator().manual_seed(4)
    draws = cotta_draws(3, tuple(x.shape), h)
    assert torch.equal(g.get_state(), h.get_state())  # the same number and order of draws
    h = torch.Generator().manual_seed(4)
    assert torch.randperm(5, generator=h).tolist() == draws[0]["order"]
    for d in draws:
        assert 0.6 <= d["factors"][0] <= 1.4 and -0.06 <= d["factors"][3] <= 0.06
        assert -15 <= d["angle"] <= 15 and 0.9 <= d["scale"] <= 1.1 and all(abs(t) <= 4 for t in d["translate"])
        assert 0.001 <= d["sigma"] <= 0.5
    # an identity draw (factors 1 / hue 0, no rotation, shift, blur, flip or noise) gives back the image
    ident = dict(order=[0, 1, 2, 3, 4], factors=[1.0, 1.0, 1.0, 0.0, 1.0], angle=0.0, translate=(0, 0), scale=1.0,
                 sigma=1e-3, flip=False, noise=torch.zeros(x.shape))
    import tta.methods.augmentations as aug
    original = aug.cotta_draws
    aug.cotta_draws = lambda *a, **k: [ident]
    try:
        same = cotta_augment(x, 1, torch.Generator())
        ident_flip = dict(ident, flip=True)
        aug.cotta_draws = lambda *a, **k: [ident_flip]
        flipped = cotta_augment(x, 1, torch.Generator())
    finally:
        aug.cotta_draws = original
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(flipped, x.flip(-1), rtol=0, atol=1e-5)


def _state(method):
    return ([p.detach().clone() for p in method.params], [p.clone() for p in method.teacher.parameters()],
            copy.deepcopy(method.optimizer.state_dict()), method.generator.get_state())


def test_reset_restores_student_teacher_optimizer_and_generator_bit_for_bit():
    method = _setup(CoTTA(threshold=1.0, augmentations=3, restore=0.1, lr=0.01, seed=2))
    params0, teacher0, optimizer0, generator0 = _state(method)
    first = [method.forward(x) for x in _batches()]
    assert method.augmented_batches == 3 and method.optimizer.state_dict()["state"]
    assert any(not torch.equal(a, b) for a, b in zip(method.teacher.parameters(), teacher0))
    method.reset()
    params1, teacher1, optimizer1, generator1 = _state(method)
    assert all(torch.equal(a, b) for a, b in zip(params0, params1))
    assert all(torch.equal(a, b) for a, b in zip(teacher0, teacher1))
    assert optimizer1 == optimizer0 and torch.equal(generator0, generator1)
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_state_is_detected_and_reset():
    method = _setup(CoTTA(threshold=0.0, lr=0.01, seed=0))
    params0 = [p.detach().clone() for p in method.params]
    method.forward(_batches(1)[0])
    assert not method.diverged()
    with torch.no_grad():
        method.teacher_params[0].view(-1)[0] = float("nan")
    assert method.diverged()
    method.reset()
    assert not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(params0, method.params))


def test_batch_of_one_image_adapts_and_augments_per_view():
    method = _setup(CoTTA(threshold=1.0, augmentations=4, lr=0.01, seed=0))
    before = [p.detach().clone() for p in method.params]
    out = method.forward(_batches(1, size=1)[0])
    assert out.shape == (1, 10) and bool(torch.isfinite(out).all()) and method.augmented_batches == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, method.params))


def test_runs_through_run_on_the_smoke_protocol():
    rows = Run(RunConfig(protocol="smoke", method="cotta", hparams={"augmentations": 4}, n_examples=200,
                         domains=["fog", "gaussian_noise"])).execute(store=None)
    assert [r["n"] for r in rows] == [200, 200]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in rows)
