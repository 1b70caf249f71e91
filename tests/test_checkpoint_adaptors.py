"""Checkpoint adaptors (tta.models.checkpoint) on synthetic state dicts in each layout people have,
and pretrained weights by name (``torchvision:`` / ``timm:``) through the libraries' caches.

Every layout is built from a tiny model's own tensors, saved with ``torch.save`` as the
training code of that ecosystem saves it, and loaded with ``load_into``; a test passes only
if the loaded tensors equal the saved ones.
"""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from tta.errors import UserError
from tta.models import create_model
from tta.models.checkpoint import load_into, read_state_dict, resolve
from tta.models.registry import entry_of, register_model


class Tiny(nn.Module):
    """conv -> BN -> linear: keys conv.weight, bn.*, fc.*."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class Wrapped(nn.Module):
    """A network whose own (only) submodule is called ``model``: its keys start with ``model.``."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.model = Tiny(num_classes)


@register_model("adaptor_tiny")
def adaptor_tiny(num_classes: int = 3) -> Tiny:
    """Tiny, no adaptors."""
    return Tiny(num_classes)


@register_model("adaptor_tiny_aux", drop_keys=("aux_head.",))
def adaptor_tiny_aux(num_classes: int = 3) -> Tiny:
    """Tiny whose checkpoints carry a training-time auxiliary head."""
    return Tiny(num_classes)


RENAMES = {"features.0.": "conv.", "features.1.": "bn.", "classifier.": "fc."}


def _their_names(state: dict) -> dict:
    """The third-party names -> Tiny's (the hook a plugin model declares)."""
    out = {}
    for key, value in state.items():
        old = next((o for o in RENAMES if key.startswith(o)), None)
        out[RENAMES[old] + key[len(old):] if old else key] = value
    return out


@register_model("adaptor_tiny_renamed", remap_keys=_their_names)
def adaptor_tiny_renamed(num_classes: int = 3) -> Tiny:
    """Tiny, checkpoints with a third-party's key names."""
    return Tiny(num_classes)


def _source(seed: int = 0) -> dict[str, torch.Tensor]:
    """A trained-looking state dict of Tiny (random, with non-default BN statistics)."""
    torch.manual_seed(seed)
    net = Tiny()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor).abs() + 0.1)
    net.bn.num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _loaded(name: str, obj, tmp_path, filename: str = "ckpt.pt") -> dict[str, torch.Tensor]:
    path = tmp_path / filename
    torch.save(obj, path)
    model = create_model(name, num_classes=3)
    load_into(model.net, str(path))
    return model.net.state_dict()


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("layout", [
    lambda s: s,                                               # bare state dict
    lambda s: {"state_dict": s, "epoch": 3},                   # Lightning / mmseg / many scripts
    lambda s: {"model_state_dict": s, "optimizer_state_dict": {}},
    lambda s: {"model": s, "args": "resnet"},                  # DeiT / timm train scripts
    lambda s: {"net": s, "acc": 0.9},                          # pytorch-cifar style
    lambda s: {"meta": {"epoch": 1}, "state_dict": {"model": s}},  # nested wrappers
    lambda s: _prefixed(s, "module."),                         # DataParallel / DDP
    lambda s: {"state_dict": _prefixed(s, "model.")},          # Lightning module holding self.model
    lambda s: {"state_dict": _prefixed(s, "module.model.")},   # both
], ids=["bare", "state_dict", "model_state_dict", "model", "net", "nested", "module.", "model.", "module.model."])
def test_wrappers_and_prefixes_unwrap(layout, tmp_path):
    source = _source()
    _assert_same(_loaded("adaptor_tiny", layout(source), tmp_path), source)


def test_a_prefix_stays_when_the_model_itself_has_it(tmp_path):
    """A network whose submodule is called ``model`` keeps its ``model.`` keys (they fit as they are)."""
    source = _prefixed(_source(), "model.")
    torch.save({"state_dict": source}, tmp_path / "w.pt")
    net = Wrapped()
    load_into(net, str(tmp_path / "w.pt"))
    _assert_same(net.state_dict(), source)


def test_a_prefix_on_only_some_keys_is_not_stripped(tmp_path):
    source = _source()
    mixed = {("module." + k if k.startswith("conv") else k): v for k, v in source.items()}
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(UserError, match=r"2 missing keys .*2 unexpected keys \(e\.g\. module\.conv\.bias\)"):
        load_into(create_model("adaptor_tiny", 3).net, str(tmp_path / "mixed.pt"))


def test_declared_auxiliary_head_is_dropped_and_undeclared_is_refused(tmp_path):
    source = _source()
    with_aux = {**source, "aux_head.0.weight": torch.ones(2, 4), "aux_head.0.bias": torch.ones(2)}
    _assert_same(_loaded("adaptor_tiny_aux", {"state_dict": with_aux}, tmp_path), source)
    with pytest.raises(UserError, match=r"2 unexpected keys \(e\.g\. aux_head\.0\.bias\)") as info:
        _loaded("adaptor_tiny", {"state_dict": with_aux}, tmp_path)
    assert "\n" not in str(info.value)


def test_remap_hook_renames_third_party_keys(tmp_path):
    source = _source()
    theirs = {}
    for key, value in source.items():
        new = next(o for o, n in RENAMES.items() if key.startswith(n))
        theirs[new + key.split(".", 1)[1]] = value
    assert "features.0.weight" in theirs and "conv.weight" not in theirs
    _assert_same(_loaded("adaptor_tiny_renamed", {"model": _prefixed(theirs, "module.")}, tmp_path), source)
    with pytest.raises(UserError, match="does not fit"):  # without the hook: nothing fits
        _loaded("adaptor_tiny", theirs, tmp_path)


def test_explicit_adaptor_arguments_override_the_registration(tmp_path):
    source = _source()
    torch.save({**source, "extra.w": torch.zeros(1)}, tmp_path / "x.pt")
    net = Tiny()  # not made by create_model: no registration to consult
    assert entry_of(net) is None
    load_into(net, str(tmp_path / "x.pt"), drop_keys=("extra.",))
    _assert_same(net.state_dict(), source)


def test_mismatch_is_one_line_with_the_files_and_the_models_key_names(tmp_path):
    torch.save({"state_dict": {"encoder.stem.w": torch.zeros(1), "encoder.stem.b": torch.zeros(1),
                               "head.w": torch.zeros(2), "head.b": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(UserError) as info:
        load_into(create_model("adaptor_tiny", 3).net, str(tmp_path / "other.pt"))
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert "the file's keys: encoder.stem.w, encoder.stem.b, head.w, ..." in message
    assert "the model's: conv.weight, conv.bias, bn.weight, ..." in message


def test_shape_mismatch_names_both_shapes(tmp_path):
    source = _source()
    source["fc.weight"] = torch.zeros(5, 4)
    torch.save(source, tmp_path / "s.pt")
    with pytest.raises(UserError, match=r"1 shape mismatches \(e\.g\. fc\.weight: \(5, 4\) vs \(3, 4\)\)"):
        load_into(create_model("adaptor_tiny", 3).net, str(tmp_path / "s.pt"))


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    source = _source()
    save_file(source, str(tmp_path / "model.safetensors"))
    model = create_model("adaptor_tiny", 3)
    load_into(model.net, str(tmp_path / "model.safetensors"))
    _assert_same(model.net.state_dict(), source)


def test_read_state_dict_still_strips_module_for_callers_without_a_model(tmp_path):
    source = _source()
    torch.save({"state_dict": _prefixed(source, "module.")}, tmp_path / "dp.pt")
    assert set(read_state_dict(tmp_path / "dp.pt")) == set(source)


# --- torchvision / mmseg DeepLabV3 layouts ------------------------------------------------------


@pytest.fixture(scope="module")
def deeplab():
    return create_model("deeplabv3_resnet50", num_classes=5).net


def test_torchvision_deeplabv3_with_aux_classifier_loads(deeplab, tmp_path):
    """torchvision's own DeepLabV3 (aux_loss=True) state dict: 8 aux_classifier tensors dropped, the rest strict."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(1)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).state_dict()
    aux = [k for k in theirs if k.startswith("aux_classifier.")]
    assert len(aux) == 8
    torch.save(theirs, tmp_path / "tv.pt")
    load_into(deeplab, str(tmp_path / "tv.pt"))
    got = deeplab.state_dict()
    assert set(got) == set(theirs) - set(aux)
    assert all(torch.equal(got[k], theirs[k]) for k in got)


def test_mmseg_deeplabv3_layout_is_refused_with_the_reason(deeplab, tmp_path):
    """mmseg's key names (checked in its source): state_dict + backbone.stem.* + decode_head.* + auxiliary_head.*"""
    mmseg = {"meta": {"mmseg_version": "1.2.2"}, "state_dict": {
        "backbone.stem.0.weight": torch.zeros(32, 3, 3, 3), "backbone.stem.1.weight": torch.zeros(32),
        "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "decode_head.image_pool.1.conv.weight": torch.zeros(512, 2048, 1, 1),
        "decode_head.aspp_modules.1.conv.weight": torch.zeros(512, 2048, 3, 3),
        "decode_head.bottleneck.conv.weight": torch.zeros(512, 2560, 3, 3),
        "decode_head.conv_seg.weight": torch.zeros(19, 512, 1, 1),
        "auxiliary_head.conv_seg.weight": torch.zeros(19, 256, 1, 1)}}
    torch.save(mmseg, tmp_path / "mmseg.pth")
    with pytest.raises(UserError) as info:
        load_into(deeplab, str(tmp_path / "mmseg.pth"))
    message = str(info.value)
    assert "\n" not in message
    assert "mmseg's layout" in message and "ASPPHead" in message and "backbone.stem" in message


# --- pretrained weights by name -----------------------------------------------------------------


def _offline_torch_hub(monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_torchvision_weights_offline_one_line_says_where_to_place_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline_torch_hub(monkeypatch)
    with pytest.raises(UserError) as info:
        resolve("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    message = str(info.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in message
    assert message.endswith(f"place https://download.pytorch.org/models/resnet18-f37072fd.pth at {expected}")


def test_torchvision_weights_without_network_fail_in_one_line(tmp_path, monkeypatch):
    """The real offline path (no monkeypatching): skipped where the network is reachable."""
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        pytest.skip("online: this test checks the offline message")
    except OSError:
        pass
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"not cached and could not be downloaded .*; offline, place .* at "):
        resolve("torchvision:ResNet18_Weights.IMAGENET1K_V1")


def test_torchvision_weights_in_the_cache_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline_torch_hub(monkeypatch)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    source = _source(3)
    torch.save(source, cached)  # a stand-in with Tiny's keys: what matters is that this file is read
    assert resolve("torchvision:ResNet18_Weights.IMAGENET1K_V1") == cached
    model = create_model("adaptor_tiny", 3)
    load_into(model.net, "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    _assert_same(model.net.state_dict(), source)


def test_unknown_weight_names_are_one_line():
    with pytest.raises(UserError, match=r"unknown torchvision weights 'ResNet50_Weights\.NOPE'; name the enum in full"):
        resolve("torchvision:ResNet50_Weights.NOPE")
    # the short form needs an architecture, which only tta.run (--model / the protocol's model) supplies
    with pytest.raises(UserError, match=r"torchvision:IMAGENET1K_V1 names weights without their architecture"):
        resolve("torchvision:IMAGENET1K_V1")
    with pytest.raises(UserError, match=r"unknown timm pretrained weights 'resnet50\.nope'"):
        resolve("timm:resnet50.nope")
    with pytest.raises(UserError, match="names no weights"):
        resolve("timm:")


def test_timm_weights_offline_one_line_names_the_hub_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve("timm:resnet18.a1_in1k")
    message = str(info.value)
    target = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "local" / "model.safetensors"
    assert "\n" not in message
    assert message.endswith(f"place model.safetensors from https://huggingface.co/timm/resnet18.a1_in1k at {target}")


def test_timm_weights_at_the_hub_cache_path_are_used(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "local" / "model.safetensors"
    target.parent.mkdir(parents=True)
    source = _source(4)
    save_file(source, str(target))
    assert resolve("timm:resnet18.a1_in1k") == target
    model = create_model("adaptor_tiny", 3)
    load_into(model.net, "timm:resnet18.a1_in1k")
    _assert_same(model.net.state_dict(), source)


def test_torchvision_resnet_weights_fit_the_timm_model_of_the_same_name(tmp_path, monkeypatch):
    """``--model resnet18 --checkpoint torchvision:ResNet18_Weights.IMAGENET1K_V1``: torchvision's key
    layout (here a random torchvision resnet18 saved at the cache path) loads strictly into timm's resnet18."""
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline_torch_hub(monkeypatch)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    theirs = resnet18(weights=None).state_dict()
    torch.save(theirs, cached)
    model = create_model("resnet18", num_classes=1000)
    load_into(model.net, "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    got = model.net.state_dict()
    assert set(got) == set(theirs) and all(torch.equal(got[k], theirs[k]) for k in got)
