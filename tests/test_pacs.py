"""PACS reader on a tiny fixture in the exact on-disk layout; TTA and training on top of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tta.data.pacs import CLASSES, DOMAINS, LazyImages, list_domain
from tta.errors import UserError
from tta.protocols import Protocol, find_spec


@pytest.fixture
def pacs_root(tmp_path):
    """<root>/PACS/<domain>/<class>/ with 1-2 images per class, mixed sizes and formats."""
    rng = np.random.default_rng(0)
    for d, domain in enumerate(DOMAINS):
        for c, name in enumerate(CLASSES):
            folder = tmp_path / "PACS" / domain / name
            folder.mkdir(parents=True)
            for i in range(1 + (c % 2)):
                pixels = np.full((227, 200 + 10 * i, 3), 30 * c + d, dtype=np.uint8)
                pixels[:5] = rng.integers(0, 255, size=(5, 200 + 10 * i, 3), dtype=np.uint8)
                suffix = ".png" if (c + i) % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")
            (folder / "notes.txt").write_text("not an image")
    return tmp_path


def test_listing_labels_and_lazy_images(pacs_root):
    paths, labels = list_domain(pacs_root, "sketch")
    expected = [c for c in range(7) for _ in range(1 + c % 2)]
    assert labels.tolist() == expected and labels.dtype == np.int64
    assert all(p.suffix in (".png", ".jpg") for p in paths)
    images = LazyImages(paths)
    assert len(images) == len(expected) and images.shape == (len(expected), 224, 224, 3)
    batch = images[np.array([3, 0])]
    assert batch.dtype == np.uint8 and batch.shape == (2, 224, 224, 3)
    # class 2's flat fill value (30*2 + domain index 3) survives the resize below the noisy top rows
    assert int(batch[0, 100, 100, 0]) == 63 and int(batch[1, 100, 100, 0]) == 3


def test_reader_registered_without_severities(pacs_root):
    protocol = Protocol.create(find_spec("pacs"), pacs_root)
    domains = protocol.domains(["photo"])
    assert domains[0].severity is None and domains[0].key == "photo"
    protocol.reader.check(domains, pacs_root)
    data = protocol.reader.load(domains[0], pacs_root)
    assert len(data.images) == len(data.labels) == 10
    with pytest.raises(UserError, match="PACS data missing"):
        protocol.reader.check(domains, pacs_root / "nowhere")


def test_tta_run_on_pacs_target_with_checkpoint(pacs_root, tmp_path, capsys):
    from tta.models import create_model
    from tta.run import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "smoke7.pt"
    torch.save(create_model("smoke_cnn", 7).net.state_dict(), checkpoint)
    code = main(["--protocol", "pacs", "--target", "sketch", "--model", "smoke_cnn", "--checkpoint", str(checkpoint),
                 "--method", "alpha_bn", "--data-root", str(pacs_root), "--no-store", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("sketch") and "n     10" in out


def test_training_on_pacs_fixture_with_domainbed_augmentation(pacs_root, tmp_path):
    from tta.training.loop import TrainConfig, Training

    training = Training(TrainConfig("pacs", "erm", "sketch", model="smoke_cnn", pretrained="none", steps=2,
                                    checkpoint_every=2, batch_size=2, data_root=str(pacs_root),
                                    out=str(tmp_path / "run"), hparams={"lr": 1e-3}))
    assert [d.name for d in training.sources] == ["art_painting", "cartoon", "photo"]
    summary = training.run()
    assert summary["step"] == 2 and 0.0 <= summary["target_acc"] <= 1.0
    assert (tmp_path / "run" / "best.pt").is_file()


def bn_buffers(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def pacs_training(pacs_root, out, **kw):
    from tta.training.loop import TrainConfig, Training

    settings = dict(model="smoke_cnn", steps=1, checkpoint_every=1, batch_size=2, data_root=str(pacs_root),
                    out=str(out), hparams={"lr": 1e-3})
    return Training(TrainConfig("pacs", "erm", "sketch", **{**settings, **kw}))


def test_random_init_trains_batchnorm_statistics_despite_the_frozen_recipe(pacs_root, tmp_path):
    """The PACS recipe freezes BN (DomainBed); from random init that would keep mean 0 / var 1."""
    from tta.training.spec import find_recipe

    assert find_recipe("pacs").bn == "frozen"
    training = pacs_training(pacs_root, tmp_path / "run", pretrained="none")
    assert training.bn == "train" and training.identity["bn"] == "train"
    assert len(training.notices) == 1 and "bn = train" in training.notices[0]
    summary = training.run()
    assert summary["bn"] == "train"
    stats = bn_buffers(torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"])
    assert len(stats) == 8  # 4 BatchNorm layers x (mean, var)
    for name, value in stats.items():
        untouched = torch.zeros_like(value) if name.endswith("mean") else torch.ones_like(value)
        assert not torch.allclose(value, untouched, atol=1e-4), name


def test_explicit_frozen_batchnorm_without_pretrained_weights_is_refused(pacs_root, tmp_path):
    with pytest.raises(UserError, match="--bn frozen needs pretrained weights"):
        pacs_training(pacs_root, tmp_path / "run", pretrained="none", bn="frozen")
    assert not (tmp_path / "run").exists()


def test_frozen_batchnorm_keeps_the_pretrained_statistics(pacs_root, tmp_path):
    from tta.models import create_model

    torch.manual_seed(0)
    donor = create_model("smoke_cnn", 10).net  # an "ImageNet" model: other classes, its own statistics
    for name, value in bn_buffers(donor.state_dict()).items():
        value.copy_(torch.rand_like(value) + 0.5)
    weights = tmp_path / "donor.pt"
    torch.save(donor.state_dict(), weights)
    training = pacs_training(pacs_root, tmp_path / "run", pretrained=str(weights))
    assert training.bn == "frozen" and training.notices == []
    training.run()
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    kept = bn_buffers(donor.state_dict())
    for name, value in bn_buffers(saved["state_dict"]).items():
        assert torch.equal(value, kept[name]), name
    assert saved["tta_meta"]["pretrained_sha256"] == training.pretrained_sha256 != ""
    # the same file under --bn train: the statistics move
    moved = pacs_training(pacs_root, tmp_path / "trained", pretrained=str(weights), bn="train")
    moved.run()
    state = torch.load(tmp_path / "trained" / "best.pt", weights_only=True)["state_dict"]
    moved_stats = bn_buffers(state)
    assert all(not torch.equal(moved_stats[name], kept[name]) for name in kept)
