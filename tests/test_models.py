"""Model factories: parameter counts, checkpoint layouts, timm by name, checkpoint loading."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from tta.errors import UserError
from tta.models import create_model, load_into
from tta.models.checkpoint import resolve


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                            ("resnet56", 0.85), ("wrn28_10", 36.5)])
def test_parameter_counts_match_the_papers(name, millions):
    assert n_params(create_model(name, 10)) / 1e6 == pytest.approx(millions, rel=0.01)


def test_wide_resnet_uses_robustbench_module_names():
    keys = set(create_model("wrn28_10", 10).net.state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.running_mean", "block1.layer.0.convShortcut.weight",
            "block3.layer.3.conv2.weight", "bn1.weight", "fc.bias"} <= keys
    assert "block1.layer.1.convShortcut.weight" not in keys


def test_option_a_shortcut_has_no_parameters_and_pads_channels():
    model = create_model("resnet20", 10).net
    assert not any("shortcut" in k for k in model.state_dict())
    out = model.layer2[0].shortcut(torch.ones(2, 16, 8, 8))
    assert out.shape == (2, 32, 4, 4) and out[:, :8].abs().sum() == 0 and out[:, 8:24].min() == 1


def test_any_timm_model_by_name():
    model = create_model("resnet18", num_classes=7)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(UserError, match="not a timm model name either"):
        create_model("resnet18x_nonexistent", 10)


def test_checkpoint_with_dataparallel_prefix_loads(tmp_path, resnet20_checkpoint):
    model = create_model("resnet20", 10)
    loaded = load_into(model.net, resnet20_checkpoint)
    assert loaded.sha256.startswith("12fca82f")
    reference = torch.load(resnet20_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.net.linear.weight, reference["module.linear.weight"])


def test_url_checkpoint_is_downloaded_once_and_checksummed(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    torch.manual_seed(0)
    state = create_model("resnet20", 10).net.state_dict()
    torch.save(state, served / "weights.pt")
    digest = hashlib.sha256((served / "weights.pt").read_bytes()).hexdigest()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/weights.pt"
    try:
        path = resolve(url, digest)
        assert path.is_file() and path.is_relative_to(tmp_path / "cache")
        (served / "weights.pt").unlink()  # a second resolve must come from the cache
        assert resolve(url, digest) == path
        with pytest.raises(UserError, match="download"):
            resolve(url.replace("weights", "other"), None)
        torch.save({"x": torch.ones(1)}, served / "tampered.pt")
        with pytest.raises(UserError, match="expected 0000"):
            resolve(url.replace("weights", "tampered"), "0" * 64)
    finally:
        server.shutdown()
    model = create_model("resnet20", 10)
    assert load_into(model.net, url, digest).sha256 == digest
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])


def test_offline_url_fails_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path))
    with pytest.raises(UserError) as info:
        resolve("http://127.0.0.1:9/resnet20-12fca82f.th", "12fca82f" + "0" * 56)
    message = str(info.value)
    assert "resnet20-12fca82f.th" in message and str(tmp_path) in message and "127.0.0.1:9" in message
