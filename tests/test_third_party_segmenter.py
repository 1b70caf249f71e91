"""Issue 13's must-show: a third-party-style segmenter as a plugin model, run by ``tta.run`` on a tiny
Cityscapes-layout folder with ``source``, ``bn_adapt`` and ``alpha_bn``, scores the same mIoU as a
hand-written loop.

The network (``street20``, a ``--plugin`` file as a user writes it) differs from tta's models the
way published segmenters do: its checkpoint has mmseg-style key names (``backbone.layers.N.conv``,
``decode_head.conv_seg``, plus an ``auxiliary_head`` to drop) that its ``remap_keys`` renames; it
was trained on BGR images with its own per-channel mean and std (``channel_order="bgr"``); it has
20 outputs, its own class order with a ``void`` class first, of which the 19 Cityscapes classes are
picked in train-ID order (void dropped); and it predicts at 1/8 resolution.

Its weights are real: the shipped street-scene segmenter's (``builtin:street_seg``, trained), with
the first convolution's input channels reversed for BGR, an extra 2x2 average pooling to reach
stride 8, and its 7 classes' classifier rows placed at their Cityscapes classes among seeded random
rows for the other 13 and for void. The data are 4 procedural street scenes in fog (a shift from
the synthetic training style, so the BatchNorm methods change the predictions), written as
Cityscapes ``leftImg8bit`` / ``gtFine_labelIds`` PNGs at 128 x 256 with ignored label IDs
(ego vehicle, unlabeled) and read at ``--input-size 64x128``.

The hand-written loop reads the PNGs itself (PIL), maps label IDs to train IDs with its own
table, and writes the network with ``torch.nn.functional`` from the checkpoint file's tensors
under their own names: BGR flip, normalization, the three BatchNorm statistics rules, average
pooling, the void/class mapping, bilinear upsampling to the label size, ignored pixels and the
confusion matrix. It shares with the runner only the stream order (taken from ``Run``'s segment,
and its images and labels are checked equal to the loop's own). Float reductions in another order
may flip a pixel whose two best logits tie to ~1e-6, so mIoU is compared to 0.01 points; a
dropped flip, normalization or class mapping moves it by more than a point (checked).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import run_cli
from tta import plugins
from tta.data.street_scenes import CLASSES as STREET_CLASSES, generate
from tta.models.street_seg import street_seg_weights
from tta.runner import Run, RunConfig
from tta.scenarios import StreamSettings

MODEL = "street20_plugin_test"
N_IMAGES, BATCH = 4, 2
INPUT = (64, 128)  # --input-size: what the network sees
NATIVE = (128, 256)  # the files' size; labels are scored at it
ALPHA = 0.3

PLUGIN = textwrap.dedent('''
    """street20: a third-party street segmenter as a tta model (BGR, 20 outputs with void, 1/8 resolution)."""
    import re

    import torch
    from torch import nn

    from tta.models.registry import register_model

    THEIR_CLASSES = ("void", "sky", "building", "road", "sidewalk", "vegetation", "car", "person", "wall", "fence",
                     "pole", "traffic light", "traffic sign", "terrain", "rider", "truck", "bus", "train",
                     "motorcycle", "bicycle")
    CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle")
    KEEP = [THEIR_CLASSES.index(name) for name in CITYSCAPES]  # void (their 0) is never picked
    # their checkpoint's names -> this module's
    RULES = ((r"^backbone\\.layers\\.(\\d+)\\.conv\\.", r"encoder.\\1.0."),
             (r"^backbone\\.layers\\.(\\d+)\\.bn\\.", r"encoder.\\1.1."),
             (r"^decode_head\\.fuse\\.conv\\.", "decoder.0.0."), (r"^decode_head\\.fuse\\.bn\\.", "decoder.0.1."),
             (r"^decode_head\\.conv_seg\\.", "decoder.1."))


    def from_their_keys(state):
        out = {}
        for key, value in state.items():
            for pattern, replacement in RULES:
                key = re.sub(pattern, replacement, key)
            out[key] = value
        return out


    def block(cin, cout, stride=1, dilation=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU())


    class Street20(nn.Module):
        def __init__(self, num_classes=19):
            super().__init__()
            if num_classes != len(KEEP):
                raise ValueError(f"street20 predicts the {len(KEEP)} Cityscapes classes, not {num_classes}")
            self.encoder = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 48), block(48, 48, dilation=2),
                                         nn.AvgPool2d(2))
            self.decoder = nn.Sequential(block(48, 32), nn.Conv2d(32, len(THEIR_CLASSES), 1))
            self.register_buffer("keep", torch.tensor(KEEP), persistent=False)

        def forward(self, x):
            return self.decoder(self.encoder(x))[:, self.keep]  # 1/8 resolution, Cityscapes train-ID order


    @register_model("street20_plugin_test", mean=(0.06, 0.04, 0.02), std=(0.24, 0.25, 0.26), input_multiple=8,
                    channel_order="bgr", remap_keys=from_their_keys, drop_keys=("auxiliary_head.",))
    def street20(num_classes=19):
        """Third-party street segmenter: BGR, 20 outputs (void dropped), logits at 1/8 resolution."""
        return Street20(num_classes)
''')

# the test's own copies of what the plugin declares
THEIR_CLASSES = ("void", "sky", "building", "road", "sidewalk", "vegetation", "car", "person", "wall", "fence",
                 "pole", "traffic light", "traffic sign", "terrain", "rider", "truck", "bus", "train", "motorcycle",
                 "bicycle")
MEAN_BGR = torch.tensor([0.06, 0.04, 0.02]).view(1, 3, 1, 1)
STD_BGR = torch.tensor([0.24, 0.25, 0.26]).view(1, 3, 1, 1)
# Cityscapes label ID -> train ID for the IDs in the fixture (cityscapesScripts' labels.py); others ignored
TRAIN_ID = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13}
TRAIN_NAMES = {0: "road", 1: "sidewalk", 2: "building", 8: "vegetation", 10: "sky", 11: "person", 13: "car"}
LABEL_ID = {"road": 7, "sidewalk": 8, "building": 11, "vegetation": 21, "sky": 23, "person": 24, "car": 26}
# train ID c -> their output index (what the plugin's KEEP picks)
CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
THEIR_INDEX = [THEIR_CLASSES.index(name) for name in CITYSCAPES]
# (stride, dilation) of the four backbone layers
LAYERS = ((2, 1), (2, 1), (1, 1), (1, 2))


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """The plugin file, the third party's checkpoint and a Cityscapes-layout data root."""
    folder = tmp_path_factory.mktemp("street20")
    plugin = folder / "street20.py"
    plugin.write_text(PLUGIN)
    theirs = _their_state()
    checkpoint = folder / "street20_iter_8000.pth"
    torch.save({"meta": {"classes": list(THEIR_CLASSES)}, "state_dict": theirs}, checkpoint)
    return plugin, checkpoint, theirs, _cityscapes_root(folder / "data")


def _their_state() -> dict[str, torch.Tensor]:
    """The trained street segmenter's tensors in the third party's names and conventions."""
    street = torch.load(street_seg_weights(), map_location="cpu", weights_only=True)
    theirs = {}
    for i in range(4):
        theirs[f"backbone.layers.{i}.conv.weight"] = street[f"encoder.{i}.0.weight"].clone()
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            theirs[f"backbone.layers.{i}.bn.{name}"] = street[f"encoder.{i}.1.{name}"].clone()
    theirs["backbone.layers.0.conv.weight"] = theirs["backbone.layers.0.conv.weight"].flip(1)  # trained on BGR
    theirs["decode_head.fuse.conv.weight"] = street["decoder.0.0.weight"].clone()
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        theirs[f"decode_head.fuse.bn.{name}"] = street[f"decoder.0.1.{name}"].clone()
    gen = torch.Generator().manual_seed(13)
    weight = 0.1 * torch.randn(len(THEIR_CLASSES), 32, 1, 1, generator=gen)
    bias = -2.0 + 0.1 * torch.randn(len(THEIR_CLASSES), generator=gen)
    for k, name in enumerate(STREET_CLASSES):  # the 7 trained classes at their places
        weight[THEIR_CLASSES.index(name)] = street["decoder.1.weight"][k]
        bias[THEIR_CLASSES.index(name)] = street["decoder.1.bias"][k]
    weight[0] = street["decoder.1.weight"].mean(0)  # void: competitive, so keeping it would change predictions
    bias[0] = street["decoder.1.bias"].max() + 1.0
    theirs["decode_head.conv_seg.weight"], theirs["decode_head.conv_seg.bias"] = weight, bias
    theirs["auxiliary_head.conv_seg.weight"] = torch.randn(len(THEIR_CLASSES), 48, 1, 1, generator=gen)
    theirs["auxiliary_head.conv_seg.bias"] = torch.zeros(len(THEIR_CLASSES))
    return theirs


def _cityscapes_root(root: Path) -> Path:
    """Foggy street scenes as cityscapes/leftImg8bit/val/<city>/*_leftImg8bit.png + gtFine label IDs at 128 x 256."""
    images, labels, _ = generate(N_IMAGES, seed=7, style="fog")
    lookup = np.array([LABEL_ID[name] for name in STREET_CLASSES], dtype=np.uint8)
    for k in range(N_IMAGES):
        city = ("bochum", "zurich")[k % 2]
        stem = f"{city}_{k:06d}_000019"
        image = Image.fromarray(images[k]).resize(NATIVE[::-1], Image.BICUBIC)
        ids = lookup[labels[k]].repeat(2, 0).repeat(2, 1)
        ids[-10:] = 1  # ego vehicle: ignored
        ids[:3, :7] = 0  # unlabeled: ignored
        for folder, name, picture in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds",
                                                                              Image.fromarray(ids))):
            path = root / "cityscapes" / folder / "val" / city / f"{stem}_{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path)
    return root


def _cli_row(material, method: str, tmp_path: Path, *hp: str) -> dict:
    plugin, checkpoint, _, root = material
    out = tmp_path / f"{method}.json"
    result = run_cli("tta.run", "--plugin", str(plugin), "--model", MODEL, "--checkpoint", str(checkpoint),
                     "--protocol", "gta5_cityscapes", "--domains", "cityscapes", "--data-root", str(root),
                     "--input-size", f"{INPUT[0]}x{INPUT[1]}", "--batch-size", str(BATCH), "--method", method,
                     "--no-store", "--json", str(out), *(("--hp", *hp) if hp else ()))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert row["model"] == MODEL and row["n"] == N_IMAGES and row["extra"]["input_size"] == "64x128"
    return row


# --- the hand-written loop ----------------------------------------------------------------------


def _own_files(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """stem -> (image 3 x 64 x 128 in [0, 1], train-ID label map at 128 x 256), read with PIL."""
    out = {}
    for path in (root / "cityscapes" / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"):
        stem = path.name.replace("_leftImg8bit.png", "")
        with Image.open(path) as handle:
            rgb = np.asarray(handle.convert("RGB").resize(INPUT[::-1], Image.BILINEAR))
        label_path = root / "cityscapes" / "gtFine" / "val" / path.parent.name / f"{stem}_gtFine_labelIds.png"
        ids = np.asarray(Image.open(label_path))
        train = np.full(ids.shape, 255, dtype=np.int64)
        for label_id, train_id in TRAIN_ID.items():
            train[ids == label_id] = train_id
        out[stem] = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255, torch.from_numpy(train))
    return out


def _stream_order(material) -> list[list[str]]:
    """The runner's batches as lists of file stems (its seeded order), checked against the loop's own reading."""
    plugin, checkpoint, _, root = material
    plugins.load_file(plugin)
    run = Run(RunConfig(protocol="gta5_cityscapes", method="source", model=MODEL, checkpoint=str(checkpoint),
                        data_root=str(root), domains=["cityscapes"], input_size=INPUT, batch_size=BATCH))
    (segment,) = run.scenario.segments(run.protocol, run.domains, StreamSettings(BATCH, 0, None, "cpu"))
    batches, _ = segment.open()
    own = _own_files(root)
    order = []
    for batch in batches:
        stems = []
        for x, y in zip(batch.x, batch.y):
            stem = next(s for s, (image, _) in own.items() if torch.equal(image, x))
            assert torch.equal(own[stem][1], y.long())  # the same label map, train IDs and 255 alike
            stems.append(stem)
        order.append(stems)
    assert sorted(s for b in order for s in b) == sorted(own)
    return order


def _norm(h, state, name, rule):
    """BatchNorm of ``h`` with the statistics ``rule`` picks: source, test batch, or alpha-mixed."""
    mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
    if rule != "source":
        batch_var, batch_mean = torch.var_mean(h, dim=(0, 2, 3), unbiased=False)
        weight = 1.0 if rule == "bn_adapt" else 1.0 - ALPHA  # weight on the test batch
        mean, var = (1 - weight) * mean + weight * batch_mean, (1 - weight) * var + weight * batch_var
    return F.batch_norm(h, mean, var, state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)


def _street20(state, x_rgb, rule, flip=True, keep=THEIR_INDEX):
    x = x_rgb.flip(1) if flip else x_rgb
    h = (x - MEAN_BGR) / STD_BGR
    for i, (stride, dilation) in enumerate(LAYERS):
        h = F.conv2d(h, state[f"backbone.layers.{i}.conv.weight"], stride=stride, padding=dilation, dilation=dilation)
        h = F.relu(_norm(h, state, f"backbone.layers.{i}.bn", rule))
    h = F.avg_pool2d(h, 2)
    h = F.relu(_norm(F.conv2d(h, state["decode_head.fuse.conv.weight"], padding=1), state, "decode_head.fuse.bn", rule))
    logits = F.conv2d(h, state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"])
    return logits[:, keep]


def _hand_scores(material, order, rule, **variant) -> tuple[float, float, set[int]]:
    """mIoU (percent) over the domain's one confusion matrix, pixel nll and the set of predicted classes."""
    _, _, theirs, root = material
    own = _own_files(root)
    confusion = np.zeros((19, 19), dtype=np.int64)
    predicted, nll, pixels = set(), 0.0, 0
    with torch.no_grad():
        for stems in order:
            x = torch.stack([own[s][0] for s in stems])
            logits = _street20(theirs, x, rule, **variant)
            assert logits.shape[-2:] == (INPUT[0] // 8, INPUT[1] // 8)
            logits = F.interpolate(logits, size=NATIVE, mode="bilinear", align_corners=False)
            for image_logits, pred, stem in zip(logits, logits.argmax(1), stems):
                label = own[stem][1]
                scored = label != 255
                truth, guess = label[scored].numpy(), pred[scored].numpy()
                predicted |= set(guess.tolist())
                pixel_logits = image_logits.permute(1, 2, 0)[scored].double()
                nll += float(F.cross_entropy(pixel_logits, label[scored], reduction="sum"))
                pixels += int(scored.sum())
                confusion += np.bincount(truth * 19 + guess, minlength=19 * 19).reshape(19, 19)
    hits = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return 100.0 * float(np.mean(hits[union > 0] / union[union > 0])), nll / pixels, predicted


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method, rule, hp", [("source", "source", ()), ("bn_adapt", "bn_adapt", ()),
                                              ("alpha_bn", "alpha_bn", (f"alpha={ALPHA}",))])
def test_plugin_segmenter_through_tta_run_matches_a_hand_written_loop(material, tmp_path, method, rule, hp):
    row = _cli_row(material, method, tmp_path, *hp)
    order = _stream_order(material)
    expected, nll, predicted = _hand_scores(material, order, rule)
    assert len(predicted) >= 3, predicted  # classes are predicted non-trivially
    assert 5.0 < expected < 95.0
    assert row["extra"]["miou"] == pytest.approx(expected, abs=0.01)
    assert row["error"] == pytest.approx(100.0 - expected, abs=0.01)
    assert row["nll"] == pytest.approx(nll, rel=1e-4)  # every logit of every scored pixel


def test_the_declared_conventions_change_the_numbers(material):
    """The BGR flip, the void class and the BatchNorm rule each move the hand loop's mIoU by
    more than the comparison's tolerance, so the test above could not pass with one of them wrong."""
    order = _stream_order(material)
    reference = {rule: _hand_scores(material, order, rule)[0] for rule in ("source", "bn_adapt", "alpha_bn")}
    assert len({round(v, 2) for v in reference.values()}) == 3
    assert abs(_hand_scores(material, order, "bn_adapt", flip=False)[0] - reference["bn_adapt"]) > 1.0
    void_as_road = [0] + THEIR_INDEX[1:]  # the void output taken for road instead of dropped
    assert abs(_hand_scores(material, order, "source", keep=void_as_road)[0] - reference["source"]) > 1.0
