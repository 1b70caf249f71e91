"""The BN-statistics methods run unchanged on segmenters, through the runner, end to end."""

from __future__ import annotations

import pytest
import torch

from tta.models import create_model
from tta.protocols.segmentation import GTA5Cityscapes
from tta.runner import Run, RunConfig

from test_segmentation_data import data_root  # noqa: F401 - fixture in the official layouts


@pytest.fixture(scope="module")
def street_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "street_seg.pt"
    torch.save(create_model("street_seg", 7).net.state_dict(), path)
    return str(path)


def _row(method: str, checkpoint: str, **config) -> dict:
    (row,) = Run(RunConfig("streets_smoke", method, checkpoint=checkpoint, domains=["night"], n_examples=16,
                           batch_size=8, **config)).execute()
    return row


def test_bn_methods_run_on_the_street_segmenter(street_checkpoint):
    rows = {m: _row(m, street_checkpoint) for m in ("source", "bn_adapt", "adabn", "alpha_bn")}
    rows.update({m: _row(m, street_checkpoint, hparams={"lr": "0.05"}) for m in ("tent", "core")})
    for method, row in rows.items():
        assert row["n"] == 16 and row["domain"] == "night"
        assert row["error"] == pytest.approx(100.0 - row["extra"]["miou"])
        assert len(row["extra"]["iou"]) == 7
    # test statistics change the predictions (pixel NLL), alpha = 1 is exactly the source model
    assert rows["bn_adapt"]["nll"] != pytest.approx(rows["source"]["nll"], rel=1e-4)
    assert rows["alpha_bn"]["nll"] != pytest.approx(rows["source"]["nll"], rel=1e-4)
    assert _row("alpha_bn", street_checkpoint, hparams={"alpha": 1.0})["nll"] == pytest.approx(rows["source"]["nll"])
    # the gradient methods step on dense outputs (every pixel an example): they move away from their BN start
    assert rows["tent"]["nll"] != pytest.approx(rows["bn_adapt"]["nll"], rel=1e-3)
    assert rows["core"]["nll"] != pytest.approx(rows["alpha_bn"]["nll"], rel=1e-3)


def test_alpha_bn_on_deeplabv3plus_over_cityscapes_files(data_root, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(GTA5Cityscapes.input_sizes, "cityscapes", (32, 64))
    torch.manual_seed(0)
    checkpoint = tmp_path / "deeplab.pt"
    torch.save(create_model("deeplabv3plus_resnet50", 19).net.state_dict(), checkpoint)
    rows = {}
    for method in ("source", "alpha_bn"):
        (rows[method],) = Run(RunConfig("gta5_cityscapes", method, model="deeplabv3plus_resnet50",
                                        checkpoint=str(checkpoint), data_root=str(data_root))).execute()
    for row in rows.values():
        assert row["domain"] == "cityscapes" and row["n"] == 3 and len(row["extra"]["iou"]) == 19
        # only road, sidewalk, building are labelled; absent classes may still be predicted (IoU 0) or be None
        assert row["data_source"] == "official"
    assert rows["alpha_bn"]["nll"] != pytest.approx(rows["source"]["nll"], rel=1e-4)
