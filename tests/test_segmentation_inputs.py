"""Segmentation inference as a user expects: --input-size, padding to the stride, low-resolution logits.

Tiny fixtures in the official Cityscapes / ACDC layouts and tiny networks registered for the
test only: a skip-connection net that crashes on sides it cannot halve evenly (as ESPNet does on
ACDC's 540 rows), and a net that predicts at 1/8 resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tta.errors import UserError
from tta.models import create_model
from tta.models.registry import IDENTITY_MEAN, ModelEntry, Normalized
from tta.protocols import Protocol, find_spec
from tta.registry import MODELS
from tta.runner import Run, RunConfig

from test_segmentation_data import EXPECTED_TRAIN_IDS

LABEL_SIZE = (32, 48)  # native label size of the fixture (height, width)
CLASS_IDS = (7, 8, 11, 0)  # road, sidewalk, building, unlabeled (ignored)


class SkipNet(nn.Module):
    """Three stride-2 stages and one skip connection: the stride-4 features are concatenated with the
    stride-8 features upsampled x2, so a side whose quarter is odd (540 -> 135 vs 68 * 2) crashes."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.decoder = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quarter = self.encoder(x)
        eighth = F.interpolate(self.down(quarter), scale_factor=2.0, mode="nearest")
        return self.decoder(torch.cat([quarter, eighth], dim=1))  # logits at 1/4 resolution


class EighthNet(nn.Module):
    """Logits at 1/8 resolution (no upsampling inside), like most published segmenters' heads."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 8, 8), nn.BatchNorm2d(16), nn.ReLU())
        self.decoder = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@pytest.fixture
def tiny_models(monkeypatch):
    """``skip8`` (input multiple 8), ``skip32`` (the default 32) and ``eighth`` (8), for this test only."""
    entries = {"skip8": ModelEntry(SkipNet, IDENTITY_MEAN, (0.5, 0.5, 0.5), "test skip net", 8),
               "skip32": ModelEntry(SkipNet, IDENTITY_MEAN, (0.5, 0.5, 0.5), "test skip net"),
               "eighth": ModelEntry(EighthNet, IDENTITY_MEAN, (0.25, 0.25, 0.25), "test 1/8 net", 8)}
    for name, entry in entries.items():
        monkeypatch.setitem(MODELS._items, name, entry)
    return entries


def _checkpoint(tmp_path: Path, name: str, seed: int = 0) -> str:
    """Random weights whose predictions are confined to the fixture's classes 0..2 (road, sidewalk, building)."""
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pt"
    state = create_model(name, 19, "segmentation").net.state_dict()
    state["decoder.bias"][3:] = -100.0
    torch.save(state, path)
    return str(path)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def cityscapes_root(tmp_path) -> Path:
    """Cityscapes val, 3 noise images with blocky label-ID maps (road, sidewalk, building, ignored)."""
    rng = np.random.default_rng(0)
    for k in range(3):
        stem = f"aachen_{k:06d}_000019"
        _save(tmp_path / f"data/cityscapes/leftImg8bit/val/aachen/{stem}_leftImg8bit.png",
              rng.integers(0, 256, (*LABEL_SIZE, 3), dtype=np.uint8))
        blocks = rng.choice(CLASS_IDS, size=(4, 6)).astype(np.uint8)
        _save(tmp_path / f"data/cityscapes/gtFine/val/aachen/{stem}_gtFine_labelIds.png",
              blocks.repeat(LABEL_SIZE[0] // 4, 0).repeat(LABEL_SIZE[1] // 6, 1))
    return tmp_path / "data"


def _run(root: Path, model: str, checkpoint: str, input_size=None, method: str = "source", protocol="gta5_cityscapes",
         **config) -> Run:
    return Run(RunConfig(protocol, method, model=model, checkpoint=checkpoint, data_root=str(root),
                         input_size=input_size, **config))


def test_input_size_override_changes_the_run_key_and_is_in_the_row(cityscapes_root, tmp_path, tiny_models):
    checkpoint = _checkpoint(tmp_path, "eighth")
    default, small, other = (_run(cityscapes_root, "eighth", checkpoint, size) for size in (None, (24, 40), (16, 32)))
    assert len({default.run_key, small.run_key, other.run_key}) == 3
    assert small.run_key == _run(cityscapes_root, "eighth", checkpoint, (24, 40)).run_key  # deterministic
    (row,) = small.execute()
    assert row["extra"]["input_size"] == "24x40" and row["extra"]["label_format"] == "labelIds" and row["n"] == 3
    # the reader resizes to the override; the default is the protocol's 512 x 1024
    assert small.protocol.reader.load(small.domains[0], cityscapes_root).images[0].shape == (24, 40, 3)
    assert default.protocol.reader.row_extra("cityscapes")["input_size"] == "512x1024"


def test_input_size_from_a_spec_file_and_bad_sizes(cityscapes_root, tmp_path, tiny_models):
    spec = tmp_path / "small_city.toml"
    spec.write_text('description = "x"\ndataset = "gta5_cityscapes"\ntask = "segmentation"\nnum_classes = 19\n'
                    'domains = ["cityscapes"]\nmodel = "eighth"\ninput_size = "24x40"\n')
    assert find_spec(str(spec)).input_size == (24, 40)
    run = _run(cityscapes_root, "eighth", _checkpoint(tmp_path, "eighth"), protocol=str(spec))
    assert run.protocol.reader.row_extra("cityscapes")["input_size"] == "24x40"
    spec.write_text(spec.read_text().replace('"24x40"', '"24"'))
    with pytest.raises(UserError, match="input_size '24' is not HxW"):
        find_spec(str(spec))
    with pytest.raises(UserError, match="cifar10c.*takes no input_size"):
        Protocol.create(find_spec("cifar10c"), tmp_path, (24, 40))


def test_cli_input_size(cityscapes_root, tmp_path, tiny_models, capsys):
    from tta.run import main

    checkpoint = _checkpoint(tmp_path, "eighth")
    base = ["--method", "source", "--protocol", "gta5_cityscapes", "--model", "eighth", "--checkpoint", checkpoint,
            "--data-root", str(cityscapes_root), "--no-store"]
    out = tmp_path / "rows.json"
    assert main([*base, "--input-size", "24x40", "--json", str(out)]) == 0
    import json

    assert json.loads(out.read_text())[0]["extra"]["input_size"] == "24x40"
    assert main([*base, "--input-size", "24x40", "--sliding-window", "16,8", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["extra"]["sliding_window"] == "16x16,8x8"
    assert main([*base, "--input-size", "24by40"]) == 2
    assert "error: --input-size '24by40' is not HxW" in capsys.readouterr().err
    assert main([*base, "--split", "testing"]) == 2
    assert "error: dataset GTA5Cityscapes has no split 'testing'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["skip8", "skip32"])
def test_540_rows_are_padded_to_the_stride_and_cropped_back(name, tiny_models):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 540, 24)
    entry = tiny_models[name]
    plain = Normalized(entry.factory(num_classes=19), entry.mean, entry.std)
    with pytest.raises(RuntimeError, match="Expected size 135 but got size 136|Sizes of tensors must match"):
        plain(x)  # the failure users meet without padding
    model = create_model(name, 19, "segmentation")
    model.net.load_state_dict(plain.net.state_dict())
    logits = model(x)
    assert logits.shape == (2, 19, 540, 24)
    # inside the image the padded forward equals the net on the mean-colour padded input, upsampled and cropped
    rows, cols = {"skip8": (544, 24), "skip32": (544, 32)}[name]
    padded = F.pad((x - model.mean) / model.std, (0, cols - 24, 0, rows - 540))
    expected = F.interpolate(plain.net(padded), size=(rows, cols), mode="bilinear", align_corners=False)[..., :540, :24]
    torch.testing.assert_close(logits, expected)
    # an input that needs no padding is passed through unchanged (logits at the net's own resolution)
    assert model(torch.rand(1, 3, 64, 32)).shape == (1, 19, 16, 8)


def test_540_rows_through_the_runner(cityscapes_root, tmp_path, tiny_models):
    (row,) = _run(cityscapes_root, "skip8", _checkpoint(tmp_path, "skip8"), (540, 24)).execute()
    assert row["n"] == 3 and row["extra"]["input_size"] == "540x24" and row["extra"]["miou"] is not None


def _hand_miou(root: Path, checkpoint: str, size: tuple[int, int]) -> float:
    """Resize with PIL, forward the 1/8 net, upsample bilinearly to the label size, one confusion matrix."""
    net = EighthNet()
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    net.eval()
    lookup = np.full(256, 255, np.int64)
    lookup[list(EXPECTED_TRAIN_IDS)] = list(EXPECTED_TRAIN_IDS.values())
    confusion = np.zeros((19, 19), np.int64)
    for image_path in sorted((root / "cityscapes/leftImg8bit/val").glob("*/*.png")):
        stem = image_path.name[: -len("_leftImg8bit.png")]
        label_path = root / "cityscapes/gtFine/val" / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
        image = Image.open(image_path).convert("RGB").resize(size[::-1], Image.BILINEAR)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            low = net(x / 0.25)
        assert low.shape[-2:] == (size[0] // 8, size[1] // 8)
        logits = F.interpolate(low, size=LABEL_SIZE, mode="bilinear", align_corners=False)[0]
        truth = lookup[np.asarray(Image.open(label_path))]
        prediction = logits.argmax(0).numpy()
        keep = truth != 255
        np.add.at(confusion, (truth[keep], prediction[keep]), 1)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return 100.0 * float(np.mean(hits[union > 0] / union[union > 0]))


def test_an_eighth_resolution_model_scores_as_a_bilinear_hand_loop(cityscapes_root, tmp_path, tiny_models):
    checkpoint = _checkpoint(tmp_path, "eighth", seed=3)
    (row,) = _run(cityscapes_root, "eighth", checkpoint, (24, 40)).execute()
    expected = _hand_miou(cityscapes_root, checkpoint, (24, 40))
    assert 0 < expected < 100
    assert row["extra"]["miou"] == pytest.approx(expected, abs=1e-9)


def test_acdc_row_records_train_id_labels(tmp_path, tiny_models):
    from test_segmentation_data import write_acdc

    root = tmp_path / "data"
    write_acdc(root, ("fog",), kinds=("labelTrainIds",))
    (row,) = _run(root, "eighth", _checkpoint(tmp_path, "eighth"), (16, 24), protocol="acdc",
                  domains=["fog"]).execute()
    assert row["extra"]["label_format"] == "labelTrainIds" and row["extra"]["input_size"] == "16x24"
    assert row["n"] == 4


def test_split_reads_that_folder_and_is_in_the_identity(cityscapes_root, tmp_path, tiny_models):
    import shutil

    shutil.copytree(cityscapes_root / "cityscapes/leftImg8bit/val", cityscapes_root / "cityscapes/leftImg8bit/train")
    shutil.copytree(cityscapes_root / "cityscapes/gtFine/val", cityscapes_root / "cityscapes/gtFine/train")
    for extra in ("leftImg8bit", "gtFine"):  # the train split holds one image fewer
        next(iter(sorted((cityscapes_root / f"cityscapes/{extra}/train/aachen").glob("*")))).unlink()
    checkpoint = _checkpoint(tmp_path, "eighth")
    val, train = (_run(cityscapes_root, "eighth", checkpoint, (24, 40), split=split) for split in ("val", "train"))
    assert val.run_key != train.run_key and val.data_fingerprint != train.data_fingerprint
    (row,) = train.execute()
    assert row["n"] == 2 and row["extra"]["split"] == "train"
    assert val.protocol.reader.row_extra("cityscapes")["split"] == "val"
    with pytest.raises(UserError, match="no split 'testing'.*train, val, test"):
        _run(cityscapes_root, "eighth", checkpoint, split="testing")
    with pytest.raises(UserError, match="Cityscapes test images not found"):
        _run(cityscapes_root, "eighth", checkpoint, split="test")
    with pytest.raises(UserError, match="cifar10c.*takes no split"):
        Protocol.create(find_spec("cifar10c"), tmp_path, split="train")


def test_acdc_split_reads_its_own_reference_folder(tmp_path, tiny_models):
    from test_segmentation_data import write_acdc

    root = tmp_path / "data"
    write_acdc(root, ("snow",))
    for kind in ("rgb_anon/snow/val", "rgb_anon/snow/val_ref", "gt/snow/val"):
        (root / "acdc" / kind).rename(root / "acdc" / kind.replace("val", "train"))
    (row,) = _run(root, "eighth", _checkpoint(tmp_path, "eighth"), (16, 24), protocol="acdc", domains=["snow"],
                  split="train").execute()
    assert row["n"] == 4 and row["extra"]["split"] == "train" and row["extra"]["label_format"] == "labelIds"


class PointwiseNet(nn.Module):
    """1x1 convolutions only: every pixel's logits depend on that pixel alone, so any tiling of the image
    into windows must give the whole-image logits exactly."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
        self.decoder = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_sliding_window_covers_every_pixel_and_averages_overlaps(monkeypatch):
    from tta.models.seg_inference import parse_window

    monkeypatch.setitem(MODELS._items, "pointwise", ModelEntry(PointwiseNet, IDENTITY_MEAN, (0.5, 0.5, 0.5), "", 8))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 54, 40)
    model = create_model("pointwise", 19, "segmentation")
    whole = model(x)
    calls = []
    model.net.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape[-2:])))
    window = parse_window("24x16,16x12")
    assert window == ((24, 16), (16, 12))
    torch.testing.assert_close(model.slide(*window)(x), whole)  # overlaps averaged: the same logits
    # mmseg's grid: rows 0, 16, 30 (last flush with 54), columns 0, 12, 24; each window padded 24x16 -> 24x16
    assert len(calls) == 9 and set(calls) == {(24, 16)}
    # a window that does not divide the stride's multiple is padded, and the 1/8 net's logits are upsampled
    monkeypatch.setitem(MODELS._items, "eighth", ModelEntry(EighthNet, IDENTITY_MEAN, (0.25, 0.25, 0.25), "", 8))
    eighth = create_model("eighth", 19, "segmentation").slide((20, 20), (10, 10))
    assert eighth(x).shape == (2, 19, 54, 40) and torch.isfinite(eighth(x)).all()
    with pytest.raises(UserError, match="stride 30x30 exceeds the crop 20x20"):
        create_model("eighth", 19, "segmentation").slide((20, 20), (30, 30))
    with pytest.raises(UserError, match="is not crop,stride"):
        parse_window("512")


def test_sliding_window_through_the_runner(cityscapes_root, tmp_path, tiny_models):
    checkpoint = _checkpoint(tmp_path, "eighth")
    whole = _run(cityscapes_root, "eighth", checkpoint, (24, 40))
    slid = _run(cityscapes_root, "eighth", checkpoint, (24, 40), sliding_window=((16, 16), (8, 12)))
    assert whole.run_key != slid.run_key
    (row,) = slid.execute()
    assert row["extra"]["sliding_window"] == "16x16,8x12" and "sliding_window" not in whole.execute()[0]["extra"]
    with pytest.raises(UserError, match="--sliding-window applies to segmentation"):
        Run(RunConfig("smoke", "source", n_examples=4, sliding_window=((16, 16), (8, 8))))
