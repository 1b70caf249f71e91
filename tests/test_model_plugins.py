"""Models as plugins: a third-party-style network wrapped in a ``--plugin`` file (its own key
names, BGR input with its own normalization, 11 outputs of which one is an ignore class), run
by ``tta.run`` end to end, against a hand-written loop on the same images.

The hand-written loop shares only the data stream with the runner (the same smoke images in
the same order and batches, from ``Run``'s own segment): the network, the BGR flip, the
normalization, the renamed checkpoint tensors, test-batch BatchNorm (``bn_adapt``) and the
class mapping are written out with ``torch.nn.functional`` from the checkpoint file's
tensors. ``nll`` is compared besides ``error``: it changes with any logit, so a dropped flip
or a mapped-wrong class cannot pass (checked below: without the flip the loop differs).
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli, fake_distribution

from tta import plugins
from tta.models import create_model
from tta.models.registry import entry_of
from tta.registry import MODELS
from tta.runner import Run, RunConfig
from tta.scenarios import StreamSettings

PLUGIN = textwrap.dedent('''
    """A third-party CIFAR-style network as a tta model (the worked example of methods/README.md)."""
    import torch
    from torch import nn

    from tta.models.registry import register_model

    # their output index of each benchmark class c (their index 0 is "void", an ignore class, dropped)
    THEIR_INDEX = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    # their checkpoint's key names -> this module's
    RENAME = {"features.0.": "body.0.", "features.1.": "body.1.", "classifier.": "head."}


    def from_their_keys(state):
        out = {}
        for key, value in state.items():
            old = next((o for o in RENAME if key.startswith(o)), "")
            out[RENAME.get(old, "") + key[len(old):]] = value
        return out


    class TheirNet(nn.Module):
        """conv -> BN -> ReLU -> global average -> 11 logits; their classes mapped to the benchmark's."""

        def __init__(self, num_classes=10):
            super().__init__()
            if num_classes != len(THEIR_INDEX):
                raise ValueError(f"TheirNet maps to {len(THEIR_INDEX)} classes, not {num_classes}")
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, 11)
            self.register_buffer("keep", torch.tensor(THEIR_INDEX), persistent=False)

        def forward(self, x):
            return self.head(self.body(x))[:, self.keep]


    @register_model("mynet_plugin_test", mean=(0.40, 0.45, 0.50), std=(0.20, 0.25, 0.30), channel_order="bgr",
                    remap_keys=from_their_keys)
    def mynet(num_classes=10):
        """Third-party CIFAR-style net: BGR input, 11 outputs (void dropped)."""
        return TheirNet(num_classes)
''')

MEAN_BGR = torch.tensor([0.40, 0.45, 0.50]).view(1, 3, 1, 1)
STD_BGR = torch.tensor([0.20, 0.25, 0.30]).view(1, 3, 1, 1)
THEIR_INDEX = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
BATCH, N = 25, 100


@pytest.fixture(scope="module")
def their_checkpoint(tmp_path_factory):
    """The third party's file: their key names, under ``state_dict``, saved from DataParallel (``module.``)."""
    gen = torch.Generator().manual_seed(5)
    theirs = {
        "features.0.weight": torch.randn(8, 3, 3, 3, generator=gen) * 0.5,
        "features.0.bias": torch.randn(8, generator=gen) * 0.1,
        "features.1.weight": 1.0 + 0.2 * torch.randn(8, generator=gen),
        "features.1.bias": 0.5 + 0.1 * torch.randn(8, generator=gen),
        "features.1.running_mean": torch.randn(8, generator=gen),
        "features.1.running_var": 1.0 + torch.rand(8, generator=gen),
        "features.1.num_batches_tracked": torch.tensor(100),
        "classifier.weight": torch.randn(11, 8, generator=gen),
        "classifier.bias": torch.randn(11, generator=gen) * 0.1,
    }
    folder = tmp_path_factory.mktemp("their_model")
    path = folder / "ckpt.pt"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in theirs.items()}}, path)
    plugin = folder / "mynet.py"
    plugin.write_text(PLUGIN)
    return path, plugin, theirs


def _hand_written(theirs: dict, flip: bool = True) -> dict[str, float]:
    """bn_adapt on the plugin network, written out: error (%) and nll over the runner's smoke stream."""
    run = Run(RunConfig(protocol="smoke", method="source", domains=["fog"], n_examples=N, batch_size=BATCH))
    (segment,) = run.scenario.segments(run.protocol, run.domains, StreamSettings(BATCH, 0, N, "cpu"))
    batches, _ = segment.open()
    wrong, nll, n = 0, 0.0, 0
    for batch in batches:
        x = batch.x.flip(1) if flip else batch.x  # RGB -> BGR
        x = (x - MEAN_BGR) / STD_BGR
        h = F.conv2d(x, theirs["features.0.weight"], theirs["features.0.bias"], padding=1)
        h = F.batch_norm(h, None, None, theirs["features.1.weight"], theirs["features.1.bias"], training=True,
                         eps=1e-5)  # test-batch statistics
        logits = F.linear(F.relu(h).mean((2, 3)), theirs["classifier.weight"], theirs["classifier.bias"])
        logits = logits[:, THEIR_INDEX]
        wrong += int((logits.argmax(1) != batch.y).sum())
        nll += float(F.cross_entropy(logits.double(), batch.y, reduction="sum"))
        n += len(batch.y)
    assert n == N
    return {"error": 100.0 * wrong / n, "nll": nll / n}


def test_plugin_model_runs_from_the_cli_and_matches_a_hand_written_loop(their_checkpoint, tmp_path):
    ckpt, plugin, theirs = their_checkpoint
    out = tmp_path / "rows.json"
    result = run_cli("tta.run", "--plugin", str(plugin), "--model", "mynet_plugin_test", "--checkpoint", str(ckpt),
                     "--protocol", "smoke", "--method", "bn_adapt", "--domains", "fog", "--n-examples", str(N),
                     "--batch-size", str(BATCH), "--no-store", "--json", str(out))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert row["model"] == "mynet_plugin_test" and row["n"] == N
    expected = _hand_written(theirs)
    assert row["error"] == pytest.approx(expected["error"], abs=1e-9)
    assert row["nll"] == pytest.approx(expected["nll"], rel=1e-4)
    unflipped = _hand_written(theirs, flip=False)
    assert abs(unflipped["nll"] - expected["nll"]) > 1e-3  # the channel order matters on these images


def test_plugin_model_registration_declares_its_adaptors(their_checkpoint):
    _, plugin, theirs = their_checkpoint
    plugins.load_file(plugin)
    entry = MODELS.get("mynet_plugin_test")
    assert entry.channel_order == "bgr" and entry.remap_keys is not None
    model = create_model("mynet_plugin_test", num_classes=10)
    assert entry_of(model.net) is entry and model.channel_order == "bgr"
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model.normalize(x), (x.flip(1) - MEAN_BGR) / STD_BGR)
    segmenter = create_model("mynet_plugin_test", num_classes=10, task="segmentation")  # padded path: same order
    assert segmenter.channel_order == "bgr" and entry_of(segmenter.net) is entry
    torch.testing.assert_close(segmenter.normalize(x), (x.flip(1) - MEAN_BGR) / STD_BGR)


def test_model_entry_point_group_registers_a_plain_factory(tmp_path, monkeypatch):
    """A distribution declaring ``[tta.models]`` with a factory it did not register itself."""
    package = tmp_path / "their_models_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        from torch import nn

        def tiny(num_classes=10):
            """A linear model on 4x4 images."""
            return nn.Sequential(nn.Flatten(), nn.Linear(48, num_classes))
    '''))
    fake_distribution(tmp_path, monkeypatch, "their-models", "tta.models", "ep_tiny_model_test = their_models_pkg:tiny")
    assert "ep_tiny_model_test" in plugins.load_model_entry_points()
    model = create_model("ep_tiny_model_test", num_classes=7)
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 7)
    assert plugins.load_model_entry_points().count("ep_tiny_model_test") == 1  # loading twice: no duplicate error


def test_bad_channel_order_is_one_line():
    from tta.errors import UserError
    from tta.models.registry import register_model

    with pytest.raises(UserError, match=r"channel_order must be one of rgb, bgr, got 'BGRA'"):
        register_model("never_registered", channel_order="BGRA")
