"""deyo and its patch-shuffle augmentation: the shuffle on a hand-checked image, PLPD filter and
weights on a hand-computed batch, layer selection, seeding, exact reset (generator included),
non-finite state, a batch of one image, and a run through ``Run``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import random_resnet20
from tta.methods.affine_adapt import OPTIMIZERS
from tta.methods.augmentations import patch_permutations, patch_shuffle
from tta.methods.deyo import DeYO, deyo_weights, plpd
from tta.runner import Run, RunConfig

#: every sample passes both filters (E <= ln K < 10 ln K; PLPD > -1 always): DeYO adapts on any batch
KEEP_ALL = {"margin": 10.0, "plpd_threshold": -1.0}


def _batches(n: int = 3, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 3, 16, 16, generator=g) for _ in range(n)]


def _setup(method: DeYO, seed: int = 0) -> DeYO:
    method.setup(random_resnet20(seed).eval())
    return method


# -- patch shuffle -----------------------------------------------------------------------------------


def test_patch_shuffle_moves_whole_tiles_by_the_drawn_permutation():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # 2 x 2 tiles of 2 x 2 pixels
    tiles = [torch.tensor([[0.0, 1], [4, 5]]), torch.tensor([[2.0, 3], [6, 7]]),
             torch.tensor([[8.0, 9], [12, 13]]), torch.tensor([[10.0, 11], [14, 15]])]
    perm = patch_permutations(1, 2, torch.Generator().manual_seed(3))[0].tolist()
    # the draw is argsort of uniform numbers from the generator, as the references' torch.rand
    assert perm == torch.argsort(torch.rand(1, 4, generator=torch.Generator().manual_seed(3)), dim=-1)[0].tolist()
    assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
    out = patch_shuffle(x, 2, torch.Generator().manual_seed(3))[0, 0]
    top, bottom = torch.cat([tiles[perm[0]], tiles[perm[1]]], 1), torch.cat([tiles[perm[2]], tiles[perm[3]]], 1)
    expected = torch.cat([top, bottom])
    assert torch.equal(out, expected)


def test_patch_shuffle_is_a_per_image_permutation_of_tiles_shared_by_the_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    out = patch_shuffle(x, 4, torch.Generator().manual_seed(1))
    perm = patch_permutations(2, 4, torch.Generator().manual_seed(1))
    tiles_in = x.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3, 2, 2)
    tiles_out = out.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3, 2, 2)
    for b in range(2):
        assert torch.equal(tiles_out[b], tiles_in[b][perm[b]])  # all channels move together
    assert not torch.equal(perm[0], perm[1])  # one permutation per image
    assert torch.equal(patch_shuffle(x, 1, g), x)  # one tile: nothing moves


def test_patch_shuffle_resamples_a_side_that_is_not_a_multiple():
    x = torch.rand(1, 3, 10, 10)
    out = patch_shuffle(x, 4, torch.Generator().manual_seed(0))  # 10 -> 8, shuffled, -> 10
    assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(ValueError, match="cannot be cut"):
        patch_shuffle(torch.rand(1, 3, 3, 3), 4, torch.Generator())


# -- PLPD and weights, hand-computed -----------------------------------------------------------------------


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(row))


class _ViewTable(nn.Module):
    """Returns prescribed logits for each image, found by its content (image i holds 16 i ... 16 i + 15),
    so the logits of a shuffled view do not depend on the batch position; one LayerNorm to adapt."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.norm_layer = nn.LayerNorm(4)

    def forward(self, x):
        return self.table[(x.flatten(1).min(1).values // 16).long()]


def test_deyo_loss_filters_by_entropy_then_plpd_and_weights_both_terms():
    k = 3
    original = [[4.0, 0, 0], [0.0, 0, 0], [0, 3.0, 0], [0, 0, 5.0]]
    view = [[0.0, 0, 0], [9.0, 9, 9], [0, 3.0, 0], [0, 0, 1.0]]  # row 1 is never asked for
    x = (torch.arange(64.0) + 0.5).reshape(4, 1, 4, 4)
    method = DeYO(seed=0)
    method.setup(_ViewTable(torch.tensor(view)))
    loss = method.deyo_loss(x, torch.tensor(original))
    # by hand: tau = 0.5 ln 3 = 0.549 drops the uniform row 1 (E = ln 3);
    # PLPD: row 0 0.9647 - 1/3, row 2 0 (same prediction) -> dropped, row 3 0.9867 - 0.5761
    tau_ent, e0 = 0.5 * math.log(k), 0.4 * math.log(k)
    assert [_entropy(r) < tau_ent for r in original] == [True, False, True, True]
    drop = {i: _softmax(original[i])[c] - _softmax(view[i])[c] for i, c in ((0, 0), (2, 1), (3, 2))}
    assert drop[0] == pytest.approx(0.6313, abs=1e-4) and drop[2] == 0.0 and drop[3] == pytest.approx(0.4106, abs=1e-4)
    assert method.selected == (3, 2)
    terms = [_entropy(original[i]) * (math.exp(-(_entropy(original[i]) - e0)) + math.exp(drop[i])) for i in (0, 3)]
    assert float(loss) == pytest.approx(sum(terms) / 2, rel=1e-6)
    # the PLPD threshold alone decides between rows 0 and 3
    method = DeYO(seed=0, plpd_threshold=0.5)
    method.setup(_ViewTable(torch.tensor(view)))
    e = _entropy(original[0])
    assert float(method.deyo_loss(x, torch.tensor(original))) == pytest.approx(
        e * (math.exp(-(e - e0)) + math.exp(drop[0])), rel=1e-6)
    assert method.selected == (3, 1)
    # nothing passes: no loss
    method = DeYO(seed=0, plpd_threshold=0.9)
    method.setup(_ViewTable(torch.tensor(view)))
    assert method.deyo_loss(x, torch.tensor(original)) is None and method.selected == (3, 0)


def test_plpd_and_weight_terms():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    view = torch.tensor([[0.4, 0.5, 0.1], [0.3, 0.3, 0.4]])
    torch.testing.assert_close(plpd(probs, view), torch.tensor([0.3, 0.2]))  # the original's label, not the view's
    entropy = torch.tensor([0.5, 1.0], requires_grad=True)
    drop = torch.tensor([0.3, 0.2], requires_grad=True)
    both = deyo_weights(entropy, drop, 0.5, True, True)
    assert not both.requires_grad
    torch.testing.assert_close(both, torch.tensor([1.0 + math.exp(0.3), math.exp(-0.5) + math.exp(0.2)]))
    torch.testing.assert_close(deyo_weights(entropy, drop, 0.5, False, True),
                               torch.tensor([math.exp(0.3), math.exp(0.2)]))
    torch.testing.assert_close(deyo_weights(entropy, drop, 0.5, True, False), torch.tensor([1.0, math.exp(-0.5)]))
    assert deyo_weights(entropy, drop, 0.5, False, False) is None


def test_both_weights_off_is_the_plain_mean_entropy_of_the_selected():
    original = torch.tensor([[4.0, 0, 0], [0, 0, 5.0]])
    x = (torch.arange(32.0) + 0.5).reshape(2, 1, 4, 4)
    method = DeYO(seed=0, reweight_ent=False, reweight_plpd=False)
    method.setup(_ViewTable(torch.zeros(2, 3)))
    expected = (_entropy([4.0, 0, 0]) + _entropy([0, 0, 5.0])) / 2
    assert float(method.deyo_loss(x, original)) == pytest.approx(expected, rel=1e-6)


# -- which layers train ---------------------------------------------------------------------------------------


def test_top_layers_stay_fixed_as_in_the_references():
    method = _setup(DeYO(seed=0))
    assert len(method.adapted_layers) == 19  # ResNet-20: no layer4, every BN trains
    method._prefix = "net."
    fixed = ["net.layer4.0.bn1", "net.blocks.9.norm1", "net.blocks.11.norm2", "net.norm", "net.norm.inner"]
    trained = ["net.layer3.0.bn1", "net.blocks.8.norm2", "net.blocks.1.norm1", "net.fc_norm", "net.bn"]
    assert [method.adapts(n, None) for n in fixed] == [False] * 5
    assert [method.adapts(n, None) for n in trained] == [True] * 5


# -- seeding and exact reset --------------------------------------------------------------------------------------


def test_same_seed_same_logits_other_seed_other_logits_and_the_run_seed_is_the_default():
    runs = {}
    for label, make in (("a", lambda: DeYO(seed=7, **KEEP_ALL)), ("b", lambda: DeYO(seed=7, **KEEP_ALL)),
                        ("c", lambda: DeYO(seed=8, **KEEP_ALL))):
        method = _setup(make())
        runs[label] = [method.forward(x) for x in _batches()]
    model = random_resnet20(0).eval()  # (seeds torch with 0)
    torch.manual_seed(7)  # what Run does right before setup
    default = DeYO(**KEEP_ALL)
    default.setup(model)
    assert default.shuffle_seed == 7
    runs["default"] = [default.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(runs["a"], runs["b"]))
    assert all(torch.equal(a, b) for a, b in zip(runs["a"], runs["default"]))
    assert torch.equal(runs["a"][0], runs["c"][0])  # the first prediction precedes any step
    assert not torch.equal(runs["a"][2], runs["c"][2])  # other permutations, other weights, other steps


def test_reset_restores_parameters_optimizer_and_generator_bit_for_bit():
    method = _setup(DeYO(seed=5, lr=0.01, **KEEP_ALL))
    state0 = {k: v.clone() for k, v in method.model.state_dict().items()}
    params0 = [p.clone() for p in method.params]
    generator0 = method.generator.get_state().clone()
    first = [method.forward(x) for x in _batches()]
    assert any(not torch.equal(a, b) for a, b in zip(method.params, params0))  # it adapted
    assert not torch.equal(method.generator.get_state(), generator0)  # permutations were drawn
    method.reset()
    assert all(torch.equal(v, state0[k]) for k, v in method.model.state_dict().items())
    assert torch.equal(method.generator.get_state(), generator0)
    assert method.optimizer.state_dict() == OPTIMIZERS["adam"](method.params, method.hp).state_dict()
    again = [method.forward(x) for x in _batches()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_non_finite_parameters_are_detected_and_reset_heals_them_a_nan_image_takes_no_step():
    method = _setup(DeYO(seed=0, **KEEP_ALL))
    saved = [p.clone() for p in method.params]
    x = _batches(1)[0]
    method.forward(x)
    assert not method.diverged()
    with torch.no_grad():
        method.params[0][0] = float("nan")
    assert method.diverged()
    method.reset()
    assert not method.diverged() and all(torch.equal(a, b) for a, b in zip(saved, method.params))
    # one NaN pixel: batch statistics and every entropy turn NaN, no sample passes, no step is taken
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    method.forward(bad)
    assert method.selected == (0, 0) and not method.diverged()
    assert all(torch.equal(a, b) for a, b in zip(saved, method.params))


def test_batch_of_one_image_adapts_on_its_spatial_statistics():
    """Batch size 1: both passes normalize with the image's own spatial statistics; it steps when
    the image passes both filters, and not otherwise."""
    x = _batches(1, size=1)[0]
    method = _setup(DeYO(seed=0, **KEEP_ALL))
    before = [p.clone() for p in method.params]
    assert method.forward(x).shape == (1, 10) and method.selected == (1, 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.params))
    strict = _setup(DeYO(seed=0, margin=0.0))  # E < 0 never holds
    before = [p.clone() for p in strict.params]
    strict.forward(x)
    assert strict.selected == (0, 0) and all(torch.equal(a, b) for a, b in zip(before, strict.params))


# -- through the runner --------------------------------------------------------------------------------------------


def test_runs_through_run_reproducibly():
    def rows():
        return Run(RunConfig(protocol="smoke", method="deyo", n_examples=400, domains=["fog", "gaussian_noise"],
                             seed=3)).execute(store=None)

    first, second = rows(), rows()
    assert [r["n"] for r in first] == [400, 400]
    assert all(0.0 <= r["error"] <= 100.0 and r["extra"]["nonfinite_resets"] == 0 for r in first)
    assert [r["error"] for r in first] == [r["error"] for r in second]
    assert [r["nll"] for r in first] == [r["nll"] for r in second]


# -- GroupNorm and LayerNorm models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, adapted, size", [("resnet26_gn", 25, 32), ("vit_base_patch16_224", 18, 224)])
def test_groupnorm_resnet_and_vit_adapt_end_to_end(name, adapted, size):
    """ResNet-26-GN: every GroupNorm trains (no layer4). ViT-B/16 (random weights): blocks 0-8's
    LayerNorms train; blocks 9-11 and the final norm stay fixed, as the references' collect_params."""
    from tta.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    method = DeYO(seed=0, **KEEP_ALL)
    method.setup(model)
    names = [n for n, _ in method.adapted_layers]
    assert len(names) == adapted
    assert not any(".blocks.9." in n or ".blocks.10." in n or ".blocks.11." in n or n == "net.norm" for n in names)
    fixed = [p for n, m in model.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and n not in names
             for p in (m.weight, m.bias)]
    assert all(not p.requires_grad for p in fixed) and len(fixed) == 2 * (25 - adapted)
    before = [p.clone() for p in method.params]
    fixed_before = [p.clone() for p in fixed]
    assert method.forward(torch.rand(2, 3, size, size)).shape == (2, 10) and method.selected == (2, 2)
    assert all(not torch.equal(a, b) for a, b in zip(before, method.params))
    assert all(torch.equal(a, b) for a, b in zip(fixed_before, fixed))
