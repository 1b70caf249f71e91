"""ImageNet-C folder layout: labels from the standard synset order, lazy decoding, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tta.errors import UserError
from tta.models import create_model
from tta.protocols.imagenet_c import imagenet_wnids
from tta.runner import Run, RunConfig


@pytest.fixture
def imagenet_c_root(tmp_path):
    wnids = imagenet_wnids()
    rng = np.random.default_rng(0)
    for wnid in (wnids[0], wnids[417], wnids[999]):
        folder = tmp_path / "ImageNet-C" / "fog" / "3" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"ILSVRC_{i}.JPEG")
    return tmp_path


def test_labels_follow_the_standard_1000_class_order(imagenet_c_root):
    from tta.protocols.imagenet_c import ImageNetC
    from tta.types import Domain

    data = ImageNetC().load(Domain("fog", 3), imagenet_c_root)
    assert list(data.labels) == [0, 0, 417, 417, 999, 999]
    batch = data.images[np.array([4, 0])]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.uint8
    assert len(imagenet_wnids()) == 1000 and imagenet_wnids()[0] == "n01440764"


def test_runs_end_to_end_and_reports_missing_severity(imagenet_c_root, tmp_path):
    checkpoint = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet18", 1000).net.state_dict(), checkpoint)
    config = dict(protocol="imagenetc", method="bn_adapt", data_root=str(imagenet_c_root), model="resnet18",
                  checkpoint=str(checkpoint), domains=["fog"], batch_size=4)
    (row,) = Run(RunConfig(**config, severity=3)).execute()
    assert row["n"] == 6 and row["domain"] == "fog-3" and 0 <= row["error"] <= 100
    with pytest.raises(UserError, match=r"ImageNet-C data missing: .*fog/5 not found"):
        Run(RunConfig(**config, severity=5))
