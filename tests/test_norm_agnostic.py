"""The entropy family on GroupNorm and LayerNorm models: which parameters train, exact reset,
the gradient the step uses, refusals of BatchNorm-only methods, and registry normalizations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tta.errors import UserError
from tta.methods.tent import Tent, softmax_entropy
from tta.models import create_model
from tta.registry import METHODS


def _gn_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("resnet26_gn", 10).eval()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):  # non-trivial affine parameters
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


class _MixedNorms(nn.Module):
    """conv -> BN -> conv -> GroupNorm -> pool -> LayerNorm -> linear (all three kinds, affine)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.gn = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.ln, self.fc = nn.LayerNorm(8), nn.Linear(8, 5)

    def forward(self, x):
        x = self.gn(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(self.ln(x.mean((2, 3))))


def test_tent_trains_every_groupnorm_affine_parameter_and_nothing_else():
    model = _gn_resnet()
    method = Tent()
    method.setup(model)
    groupnorms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groupnorms) == 25  # 3 stages x 4 blocks x 2 + the final norm
    assert [id(p) for p in method.params] == [id(p) for m in groupnorms for p in (m.weight, m.bias)]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in method.params}
    assert method.adapted_layers[0][0] == "net.layer1.0.bn1"


def test_tent_step_on_groupnorm_uses_the_entropy_gradient_and_resets_bit_exactly():
    torch.manual_seed(3)
    x = torch.rand(6, 3, 32, 32)
    reference = _gn_resnet()
    # the gradient Tent must step with, computed here by hand with autograd on a copy
    for p in reference.parameters():
        p.requires_grad_(False)
    gn_params = [p for m in reference.modules() if isinstance(m, nn.GroupNorm) for p in (m.weight, m.bias)]
    for p in gn_params:
        p.requires_grad_(True)
    grads = torch.autograd.grad(softmax_entropy(reference(x)).mean(), gn_params)

    method = Tent(optimizer="sgd", lr=0.5, momentum=0.0)
    model = _gn_resnet()
    method.setup(model)
    before = [p.detach().clone() for p in method.params]
    logits = method.forward(x)
    torch.testing.assert_close(logits, reference(x).detach())  # prediction before the step; GN has no batch stats
    for p, p0, g in zip(method.params, before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, p0) for p, p0 in zip(method.params, before))
    method.forward(torch.rand(6, 3, 32, 32))
    method.reset()
    assert all(torch.equal(p, p0) for p, p0 in zip(method.params, before))
    # after reset the first batch gives the setup logits again, bit for bit
    assert torch.equal(method.forward(x), logits)


def test_groupnorm_batch_of_one_adapts_per_image():
    """GroupNorm normalizes each image on its own: batch size 1 needs no batch statistics."""
    method = METHODS.get("eta")()
    method.setup(_gn_resnet())
    assert method.forward(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_mixed_model_swaps_batchnorm_and_trains_all_three_kinds():
    torch.manual_seed(0)
    model = _MixedNorms().eval()
    method = Tent()
    method.setup(model)
    names = [name for name, _ in method.adapted_layers]
    assert names == ["bn", "gn", "ln"]
    assert type(model.bn).__name__ == "GradTestBatchNorm"  # BN normalizes with the test batch
    assert len(method.params) == 6
    x = torch.rand(4, 3, 8, 8)
    before = [p.detach().clone() for p in method.params]
    method.forward(x)
    assert all(not torch.equal(p, p0) for p, p0 in zip(method.params, before))


def test_batchnorm_only_methods_refuse_groupnorm_models_in_one_line():
    for name, expected in (("core", "needs BatchNorm layers"), ("bn_adapt", "no BatchNorm layer"),
                           ("alpha_bn", "no BatchNorm layer"), ("bn_ema", "no BatchNorm layer")):
        with pytest.raises(UserError, match=expected) as caught:
            METHODS.get(name)().setup(_gn_resnet())
        assert "\n" not in str(caught.value)


def test_model_without_normalization_is_refused_by_the_entropy_family():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(UserError, match="no BatchNorm, GroupNorm or LayerNorm"):
        Tent().setup(model)


def test_registered_normalizations_of_the_groupnorm_resnet_and_the_vit():
    gn = create_model("resnet26_gn", 10)
    assert gn.mean.flatten().tolist() == [0.5] * 3 and gn.std.flatten().tolist() == [0.5] * 3
    vit = create_model("vit_base_patch16_224", 10)
    assert vit.mean.flatten().tolist() == [0.5] * 3 and vit.std.flatten().tolist() == [0.5] * 3
    assert sum(isinstance(m, nn.LayerNorm) for m in vit.modules()) == 25  # 2 per block x 12 + final


# -- end to end through the runner: a GroupNorm ResNet and a (small, random) timm ViT ------------------


def _tiny_vit(num_classes: int = 10) -> nn.Module:
    """A real timm VisionTransformer, small enough for CPU tests: 32 px, patch 8, 2 blocks, LayerNorm."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=num_classes)


@pytest.fixture(scope="module")
def tiny_vit_checkpoint(tmp_path_factory):
    from tta.models.registry import register_model
    from tta.registry import MODELS

    if "test_tiny_vit" not in MODELS:
        register_model("test_tiny_vit", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(_tiny_vit)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny_vit.pt"
    torch.save(_confident(_tiny_vit().state_dict(), "head.weight"), path)
    return str(path)


def _confident(state: dict, classifier: str) -> dict:
    """A random network made confident (classifier weights x 30): low-entropy predictions pass the
    entropy filters of eta, sar and deyo, so their steps are taken."""
    state[classifier] = state[classifier] * 30
    return state


@pytest.fixture(scope="module")
def gn_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gn") / "resnet26_gn.pt"
    torch.save(_confident(_gn_resnet().net.state_dict(), "fc.weight"), path)
    return str(path)


@pytest.mark.parametrize("method", ["tent", "eta", "sar", "deyo"])
@pytest.mark.parametrize("model", ["resnet26_gn", "test_tiny_vit"])
def test_groupnorm_resnet_and_vit_run_end_to_end(method, model, gn_checkpoint, tiny_vit_checkpoint):
    from tta.runner import Run, RunConfig

    checkpoint = gn_checkpoint if model == "resnet26_gn" else tiny_vit_checkpoint
    # a random network barely changes its prediction on a patch-shuffled view: open DeYO's PLPD filter
    hparams = {"plpd_threshold": 0.0} if method == "deyo" else {}
    run = Run(RunConfig(protocol="smoke", method=method, hparams=hparams, model=model, checkpoint=checkpoint,
                        n_examples=64, batch_size=32, domains=["fog", "gaussian_noise"]))
    before = [p.detach().clone() for p in run.model.parameters()]
    rows = run.execute(store=None)
    assert [r["n"] for r in rows] == [64, 64]
    assert all(r["extra"]["nonfinite_resets"] == 0 for r in rows)
    norms = (nn.GroupNorm, nn.LayerNorm)
    trained = {id(p) for m in run.model.modules() if isinstance(m, norms) for p in (m.weight, m.bias)}
    assert {id(p) for p in run.method.params} <= trained  # only normalization affine parameters train
    changed = {id(p) for p, p0 in zip(run.model.parameters(), before) if not torch.equal(p, p0)}
    assert changed and changed <= trained
