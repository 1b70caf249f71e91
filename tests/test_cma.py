"""CMA: finite losses, only the declared (encoder) parameters change, bit-exact reset, side inputs."""

from __future__ import annotations

import pytest
import torch

from tta.data.street_scenes import generate
from tta.errors import UserError
from tta.methods.cma import CMA, contrastive_loss
from tta.models import create_model
from tta.runner import Run, RunConfig


def _scenes(n: int = 4, style: str = "fog"):
    images, _, references = generate(n, seed=3, style=style)
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return to(images), to(references)


def _method(**hp) -> tuple[CMA, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("street_seg", 7)
    method = CMA(queue_len=256, **hp)
    method.setup(model)
    return method, model


def test_cma_steps_have_finite_loss_and_change_only_the_encoder():
    method, model = _method(lr=1e-3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    declared = {id(t) for t in method.touched_tensors()}
    assert declared == {id(p) for p in model.net.encoder.parameters()}
    x, reference = _scenes()
    losses = []
    for _ in range(3):
        logits = method.forward(x, reference=reference)
        losses.append(method.last_loss)
        assert logits.shape == (4, 7, 64, 128) and not logits.requires_grad
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] > 0
    encoder_names = {"net.encoder." + name for name, _ in model.net.encoder.named_parameters()}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == encoder_names  # every encoder parameter moved; decoder and BN statistics did not
    assert method.row_extra()["warp"] == "none"


def test_cma_reset_is_bit_exact():
    method, model = _method(lr=1e-3)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, reference = _scenes()
    first = [method.forward(x, reference=reference) for _ in range(3)]
    method.reset()
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    second = [method.forward(x, reference=reference) for _ in range(3)]
    assert not torch.equal(first[0], first[2])  # it adapts
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_contrastive_loss_prefers_matching_positives():
    torch.manual_seed(1)
    anchor = torch.randn(2, 8, 7, 7)
    queue = torch.nn.functional.normalize(torch.randn(8, 64), dim=0)
    ones = torch.ones(2, 1, 7, 7)
    matched = contrastive_loss(anchor, anchor, ones, queue, grid=7, temperature=0.3, threshold=0.2)
    unmatched = contrastive_loss(anchor, -anchor, ones, queue, grid=7, temperature=0.3, threshold=0.2)
    assert matched < unmatched
    # patches below the confidence threshold are dropped: zero confidence leaves no patch, loss 0
    assert contrastive_loss(anchor, anchor, ones * 0.1, queue, 7, 0.3, 0.2).item() == 0.0


def test_cma_on_streets_through_the_runner_and_refused_without_references(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "street_seg.pt"
    torch.save(create_model("street_seg", 7).net.state_dict(), checkpoint)
    run = Run(RunConfig("streets_smoke", "cma", hparams={"queue_len": 128}, checkpoint=str(checkpoint),
                        domains=["snow"], n_examples=8, batch_size=4))
    (row,) = run.execute()
    assert row["extra"]["warp"] == "none" and 0.0 <= row["extra"]["miou"] <= 100.0
    assert row["error"] == pytest.approx(100.0 - row["extra"]["miou"])
    assert len(row["extra"]["iou"]) == 7
    with pytest.raises(UserError, match="needs side input 'reference'"):
        Run(RunConfig("gta5_cityscapes", "cma", checkpoint=str(checkpoint), data_root=str(tmp_path)))
