"""``--checkpoint`` forms that name their weights: ``robustbench:<name>`` (RobustBench's model-zoo
layout), the short ``torchvision:<TAG>``, and mmseg-layout files (refused unless a plugin model
maps them).

The RobustBench ``Standard`` test runs ``tta.run`` on a RobustBench-style file (a random
WideResNet-28-10 saved as ``{"state_dict": {"module." + key: ...}}`` at
``<model_dir>/cifar10/corruptions/Standard.pt``) and compares it with RobustBench's forward written
out with ``torch.nn.functional`` on the raw [0, 1] images: the entry takes no input
normalization, and a normalized input changes the numbers (checked).
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CIFAR_NPZ, write_c_layout
from tta.errors import UserError
from tta.models import create_model, load_into
from tta.models import robustbench
from tta.models.pretrained import qualify, resolve_named
from tta.models.registry import register_model
from tta.run import main

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _protocol_model() -> str:
    raise AssertionError("the protocol's model is not needed here")


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv(robustbench.ENV_DIR, str(folder))
    return folder


def _offline(monkeypatch):
    """No host answers (the real offline path of every probe and download)."""
    def refuse(address, *args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)


# --- robustbench: names, layout, refusals --------------------------------------------------------


@pytest.mark.parametrize("ref, canonical, model", [
    ("robustbench:Standard", "robustbench:cifar10/corruptions/Standard", "wrn28_10"),
    ("robustbench:cifar10/Linf/Standard", "robustbench:cifar10/Linf/Standard", "wrn28_10"),
    ("robustbench:Standard_R50", "robustbench:imagenet/corruptions/Standard_R50", "resnet50"),
])
def test_robustbench_names_resolve_to_the_entry_and_its_model(ref, canonical, model):
    assert qualify(ref, None, _protocol_model) == (model, canonical)
    assert qualify(ref, model, _protocol_model) == (model, canonical)


def test_robustbench_entries_declare_the_normalization_of_the_model_built_for_them():
    """RobustBench's Standard WRN takes [0, 1] input (no normalizer); Standard_R50 normalizes with
    ImageNet's mean/std (robustbench/model_zoo/imagenet.py lines 16-17): the created models agree."""
    standard = robustbench.lookup("Standard")
    assert (standard.mean, standard.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert standard.normalization() == "inputs in [0, 1], no normalization"
    for entry in {e.model: e for e in robustbench.ENTRIES.values()}.values():
        model = create_model(entry.model, 10 if entry.dataset == "cifar10" else 1000)
        torch.testing.assert_close(model.mean.flatten(), torch.tensor(entry.mean))
        torch.testing.assert_close(model.std.flatten(), torch.tensor(entry.std))
        assert model.channel_order == "rgb"


def test_robustbench_refusals_are_one_line_with_the_reason():
    with pytest.raises(UserError) as info:
        qualify("robustbench:Hendrycks2020AugMix_WRN", None, _protocol_model)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("robustbench:cifar10/corruptions/Hendrycks2020AugMix_WRN is not built here: "
                              "a WideResNet-40-2 that normalizes its input with mean 0.5 and std 0.5")
    assert "cifar10 Standard (WideResNet-28-10 = wrn28_10)" in message
    with pytest.raises(UserError, match=r"cifar100/corruptions/Foo is not built here: its architecture is not one"):
        qualify("robustbench:cifar100/corruptions/Foo", None, _protocol_model)
    with pytest.raises(UserError, match=r"RobustBench has no threat model 'Linfinity'"):
        qualify("robustbench:cifar10/Linfinity/Standard", None, _protocol_model)
    with pytest.raises(UserError, match=r"is not robustbench:<name> or robustbench:<dataset>/<threat_model>/<name>"):
        qualify("robustbench:cifar10/Standard", None, _protocol_model)
    with pytest.raises(UserError, match=r"is a WideResNet-28-10 \(inputs in \[0, 1\], no normalization\), built here "
                                        r"as model 'wrn28_10', not 'resnet20'"):
        qualify("robustbench:Standard", "resnet20", _protocol_model)


def test_robustbench_file_is_found_in_the_zoo_layout(zoo_dir, monkeypatch):
    _offline(monkeypatch)
    target = zoo_dir / "cifar10" / "Linf" / "Standard.pt"  # where RobustBench's default threat model keeps it
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_named("robustbench:Standard") == target  # the corruptions entry is the same Google Drive file
    own = zoo_dir / "cifar10" / "corruptions" / "Standard.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"y")
    assert resolve_named("robustbench:Standard") == own
    assert resolve_named("robustbench:cifar10/corruptions_3d/Standard") == own  # RobustBench reads corruptions/
    assert qualify("robustbench:cifar10/corruptions_3d/Standard", None, _protocol_model)[1] == \
        "robustbench:cifar10/corruptions/Standard"


def test_robustbench_default_dir_is_under_the_user_home(tmp_path, monkeypatch):
    monkeypatch.delenv(robustbench.ENV_DIR, raising=False)
    monkeypatch.setenv("TTA_HOME", str(tmp_path / "home"))
    assert robustbench.model_dir() == tmp_path / "home" / "robustbench-models"


def test_robustbench_offline_is_one_line_naming_the_file_folder_and_url(zoo_dir, monkeypatch, capsys):
    _offline(monkeypatch)
    code = main(["--method", "source", "--protocol", "cifar10c", "--checkpoint", "robustbench:Standard", "--no-store"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    target = zoo_dir / "cifar10" / "corruptions" / "Standard.pt"
    assert err.strip() == (
        f"error: RobustBench checkpoint cifar10/corruptions/Standard is not in {zoo_dir} and could not be downloaded "
        f"(no connection to docs.google.com: Name or service not known); offline, place Standard.pt from "
        f"https://docs.google.com/uc?export=download&confirm=t&id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC at {target} "
        f"(or set $TTA_ROBUSTBENCH_DIR to a RobustBench model_dir that holds it)")


class _Response(io.BytesIO):
    headers: dict = {}


@pytest.mark.parametrize("body, saved", [(None, True), (b"<!DOCTYPE html><html>quota</html>", False)])
def test_robustbench_download_lands_in_the_layout_and_a_web_page_is_refused(zoo_dir, monkeypatch, body, saved):
    """Online: the file comes from RobustBench's Google Drive URL to <dir>/cifar10/corruptions/Standard.pt;
    Google Drive's HTML answer (quota, confirmation page) is not kept."""
    import urllib.request

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}}, buffer)
    payload = buffer.getvalue() if body is None else body
    asked = []
    monkeypatch.setattr("tta.models.pretrained.unreachable", lambda url, **kwargs: None)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: asked.append(url) or _Response(payload))
    target = zoo_dir / "cifar10" / "corruptions" / "Standard.pt"
    if saved:
        assert resolve_named("robustbench:Standard") == target
        assert target.read_bytes() == payload
    else:
        with pytest.raises(UserError, match=r"is not a PyTorch file \(Google Drive answered with a web page"):
            resolve_named("robustbench:Standard")
        assert not target.exists()
    assert asked == ["https://docs.google.com/uc?export=download&confirm=t&id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"]


def test_robustbench_standard_r50_is_torchvisions_imagenet1k_v1(tmp_path, monkeypatch):
    """RobustBench builds Standard_R50 from torchvision's resnet50(pretrained=True): the torch.hub file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_named("robustbench:imagenet/corruptions/Standard_R50") == cached


# --- robustbench Standard end to end: no input normalization ------------------------------------

N_IMAGES = 8


def _cifar_images() -> tuple[np.ndarray, np.ndarray]:
    """8 real CIFAR-10 test images where present, else seeded noise images."""
    if CIFAR_NPZ.is_file():
        data = np.load(CIFAR_NPZ)
        return data["images"][:N_IMAGES], data["labels"][:N_IMAGES].astype(np.int64)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, N_IMAGES)


def _robustbench_wrn(state: dict, x: torch.Tensor) -> torch.Tensor:
    """RobustBench's WideResNet-28-10 forward (robustbench/model_zoo/architectures/wide_resnet.py):
    pre-activation blocks, the shortcut 1x1 convolution on the activated input where widths change,
    ReLU(BN), 8x8 average pooling, linear; here from the file's tensors."""
    def bn(h, name):
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], False, 0.0, 1e-5)

    out = F.conv2d(x, state["conv1.weight"], padding=1)
    for block, stride in (("block1", 1), ("block2", 2), ("block3", 2)):
        for i in range(4):  # (28 - 4) / 6 blocks per stage
            name, step = f"{block}.layer.{i}", stride if i == 0 else 1
            activated = F.relu(bn(out, f"{name}.bn1"))
            h = F.relu(bn(F.conv2d(activated, state[f"{name}.conv1.weight"], stride=step, padding=1), f"{name}.bn2"))
            h = F.conv2d(h, state[f"{name}.conv2.weight"], padding=1)
            shortcut = f"{name}.convShortcut.weight"
            out = (F.conv2d(activated, state[shortcut], stride=step) if shortcut in state else out) + h
    out = F.relu(bn(out, "bn1"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), state["fc.weight"], state["fc.bias"])


def test_robustbench_standard_runs_on_unnormalized_inputs(zoo_dir, tmp_path, monkeypatch):
    _offline(monkeypatch)
    images, labels = _cifar_images()
    root = write_c_layout(tmp_path / "data", "gaussian_noise", images, labels, lambda imgs, severity: imgs)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    net = create_model("wrn28_10", 10).net
    for module in net.modules():  # BN statistics of these images (momentum 1): a calibrated-looking random net
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    net.train()(x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    target = zoo_dir / "cifar10" / "corruptions" / "Standard.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, target)  # RobustBench's wrappers
    assert "block1.layer.0.convShortcut.weight" in state and "block1.layer.1.convShortcut.weight" not in state

    out = tmp_path / "rows.json"
    code = main(["--method", "source", "--protocol", "cifar10c", "--checkpoint", "robustbench:Standard",
                 "--data-root", str(root), "--domains", "gaussian_noise", "--batch-size", str(N_IMAGES),
                 "--no-store", "--json", str(out)])
    assert code == 0
    (row,) = json.loads(out.read_text())
    assert row["model"] == "wrn28_10" and row["n"] == N_IMAGES

    def scores(inputs):
        with torch.no_grad():
            logits = _robustbench_wrn(state, inputs).double()
        y = torch.from_numpy(np.asarray(labels))
        return 100.0 * float((logits.argmax(1) != y).double().mean()), float(F.cross_entropy(logits, y))

    error, nll = scores(x)
    assert row["error"] == pytest.approx(error, abs=1e-9)
    assert row["nll"] == pytest.approx(nll, rel=1e-4)
    normalized = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert abs(scores(normalized)[1] - nll) > 1e-2  # normalizing the input would have shown

    # the library path (tta.sweep, a script) writes the short form out the same way as the CLI
    from tta.runner import Run, RunConfig

    run = Run(RunConfig(protocol="cifar10c", method="source", checkpoint="robustbench:Standard",
                        data_root=str(root), domains=["gaussian_noise"]))
    assert run.model_name == "wrn28_10" and run.config.checkpoint == "robustbench:cifar10/corruptions/Standard"


# --- torchvision:<TAG> --------------------------------------------------------------------------


def test_short_torchvision_form_takes_the_models_architecture():
    assert qualify("torchvision:IMAGENET1K_V1", "resnet50", _protocol_model) == (
        "resnet50", "torchvision:ResNet50_Weights.IMAGENET1K_V1")
    # an alias is written out as the tag it stands for, so the row names the exact weights
    assert qualify("torchvision:DEFAULT", "resnet50", _protocol_model)[1] == \
        "torchvision:ResNet50_Weights.IMAGENET1K_V2"
    # without --model: the protocol's model; --model stays unset so the runner takes the same
    assert qualify("torchvision:COCO_WITH_VOC_LABELS_V1", None, lambda: "deeplabv3_resnet50") == (
        None, "torchvision:DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1")
    assert qualify("torchvision:ResNet18_Weights.IMAGENET1K_V1", None, _protocol_model)[1] == \
        "torchvision:ResNet18_Weights.IMAGENET1K_V1"  # the long form passes unchanged


def test_short_torchvision_form_refusals_are_one_line():
    with pytest.raises(UserError, match=r"torchvision has no model 'resnet20'; name the weights in full"):
        qualify("torchvision:IMAGENET1K_V1", "resnet20", _protocol_model)
    with pytest.raises(UserError, match=r"torchvision has no weights 'IMAGENET1K_V3' for resnet18 "
                                        r"\(its weights: IMAGENET1K_V1, DEFAULT\)"):
        qualify("torchvision:IMAGENET1K_V3", "resnet18", _protocol_model)


def test_short_torchvision_form_loads_the_torch_hub_file(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline(monkeypatch)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    theirs = resnet18(weights=None).state_dict()
    torch.save(theirs, cached)
    _, ref = qualify("torchvision:IMAGENET1K_V1", "resnet18", _protocol_model)
    model = create_model("resnet18", num_classes=1000)
    load_into(model.net, ref)
    got = model.net.state_dict()
    assert set(got) == set(theirs) and all(torch.equal(got[k], theirs[k]) for k in got)


def test_short_torchvision_form_offline_from_the_cli(tmp_path, monkeypatch, capsys):
    """``--protocol imagenetc`` (model resnet50) + ``torchvision:IMAGENET1K_V1``: one line naming the torch.hub path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(url, dst, *args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    code = main(["--method", "source", "--protocol", "imagenetc", "--checkpoint", "torchvision:IMAGENET1K_V1",
                 "--no-store"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert err.startswith("error: torchvision weights ResNet50_Weights.IMAGENET1K_V1 are not cached")
    url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert err.strip().endswith(f"offline, place {url} at {expected}")


# --- mmseg layout -------------------------------------------------------------------------------


def _mmseg_state() -> dict[str, torch.Tensor]:
    """An mmseg EncoderDecoder's state_dict: backbone.*, decode_head.* (conv_seg), auxiliary_head.*"""
    gen = torch.Generator().manual_seed(1)
    return {"backbone.conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
            "backbone.bn.weight": torch.rand(4, generator=gen), "backbone.bn.bias": torch.randn(4, generator=gen),
            "backbone.bn.running_mean": torch.randn(4, generator=gen),
            "backbone.bn.running_var": torch.rand(4, generator=gen) + 0.5,
            "backbone.bn.num_batches_tracked": torch.tensor(3),
            "decode_head.conv_seg.weight": torch.randn(5, 4, 1, 1, generator=gen),
            "decode_head.conv_seg.bias": torch.randn(5, generator=gen),
            "auxiliary_head.conv_seg.weight": torch.randn(5, 4, 1, 1, generator=gen),
            "auxiliary_head.conv_seg.bias": torch.randn(5, generator=gen)}


class MmsegLike(nn.Module):
    """The same network as a plugin writes it: encoder (conv, BN) and decoder (1x1 classifier)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.decoder = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _from_mmseg(state: dict) -> dict:
    renames = {"backbone.conv.": "encoder.0.", "backbone.bn.": "encoder.1.", "decode_head.conv_seg.": "decoder."}
    out = {}
    for key, value in state.items():
        old = next((o for o in renames if key.startswith(o)), None)
        out[renames[old] + key[len(old):] if old else key] = value
    return out


@register_model("mmseg_like_test", drop_keys=("auxiliary_head.",), remap_keys=_from_mmseg)
def mmseg_like(num_classes: int = 5) -> MmsegLike:
    """A plugin model that maps mmseg's keys."""
    return MmsegLike(num_classes)


@pytest.mark.parametrize("wrap", [lambda s: {"meta": {"mmseg_version": "1.2.2"}, "state_dict": s},
                                  lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}],
                         ids=["mmseg", "mmseg-ddp"])
def test_mmseg_layout_is_refused_in_one_line_where_no_model_maps_it(wrap, tmp_path):
    torch.save(wrap(_mmseg_state()), tmp_path / "iter_40000.pth")
    with pytest.raises(UserError) as info:
        load_into(create_model("street_seg", 7, "segmentation").net, str(tmp_path / "iter_40000.pth"))
    message = str(info.value)
    assert "\n" not in message
    assert "is in mmseg's layout (backbone.* / decode_head.* / auxiliary_head.* keys) and does not fit model " \
           "StreetSeg: no mmseg architecture is registered here" in message
    assert "remap_keys renaming mmseg's keys" in message and "drop_keys=('auxiliary_head.',)" in message


def test_mmseg_layout_loads_into_a_plugin_model_that_maps_it(tmp_path):
    source = _mmseg_state()
    torch.save({"meta": {}, "state_dict": source}, tmp_path / "iter_40000.pth")
    model = create_model("mmseg_like_test", 5, "segmentation")
    load_into(model.net, str(tmp_path / "iter_40000.pth"))
    got = model.net.state_dict()
    expected = _from_mmseg({k: v for k, v in source.items() if not k.startswith("auxiliary_head.")})
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_non_mmseg_mismatch_keeps_the_generic_message(tmp_path):
    torch.save({"backbone.conv.weight": torch.zeros(1)}, tmp_path / "b.pt")  # backbone only: not mmseg's layout
    with pytest.raises(UserError, match=r"does not fit model StreetSeg: .*missing keys") as info:
        load_into(create_model("street_seg", 7, "segmentation").net, str(tmp_path / "b.pt"))
    assert "mmseg's layout" not in str(info.value)


# --- timm:<model>.<tag>: the tag's input normalization ------------------------------------------------


def test_timm_tag_sets_the_input_normalization_of_a_model_created_by_name(noise_root, monkeypatch):
    from types import SimpleNamespace

    from tta import runner as runner_module
    from tta.runner import Run, RunConfig

    # no weights are read here (offline): the loader is replaced, the normalization is what is checked
    monkeypatch.setattr(runner_module, "load_into", lambda *args, **kwargs: SimpleNamespace(sha256="0" * 64))
    for tag, mean in (("clip_laion2b", (0.48145466, 0.4578275, 0.40821073)), ("fb_in1k", (0.485, 0.456, 0.406))):
        run = Run(RunConfig(protocol="cifar10c", method="source", model="convnext_base", data_root=str(noise_root),
                            checkpoint=f"timm:convnext_base.{tag}", domains=["gaussian_noise"]))
        assert run.model.mean.flatten().tolist() == pytest.approx(mean)


def test_registered_model_with_another_normalization_than_the_timm_tag_is_refused(noise_root):
    from tta.runner import Run, RunConfig

    with pytest.raises(UserError, match=r"model 'resnet20' is registered with input mean .* but "
                                        r"timm:convnext_base.clip_laion2b was trained with mean"):
        Run(RunConfig(protocol="cifar10c", method="source", model="resnet20", data_root=str(noise_root),
                      checkpoint="timm:convnext_base.clip_laion2b", domains=["gaussian_noise"]))
