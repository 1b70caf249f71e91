"""Stability: a method whose loss or parameters turn non-finite is reset, counted, and the run goes on."""

from __future__ import annotations

import math

import torch

from scenario_fixtures import blob_protocol
from tta.methods.tent import Tent
from tta.models import create_model
from tta.registry import METHODS, register_method


class NaNEveryThirdBatch(Tent):
    """Tent whose first BN weight is poisoned with NaN after every third batch (test-only)."""

    def forward(self, x):
        logits = super().forward(x)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 3 == 0:
            with torch.no_grad():
                self.params[0][0] = float("nan")
        return logits


if "test_nan_every_third" not in METHODS:
    register_method("test_nan_every_third")(NaNEveryThirdBatch)


def test_tent_detects_a_non_finite_loss_and_reset_heals_it():
    torch.manual_seed(0)
    method = Tent()
    method.setup(create_model("resnet20", 10))
    saved = [p.clone() for p in method.params]
    x = torch.rand(4, 3, 16, 16)
    method.forward(x)
    assert not method.diverged()
    x[0, 0, 0, 0] = float("nan")  # one bad pixel: NaN loss, NaN gradients, NaN parameters
    method.forward(x)
    assert method.diverged()
    method.reset()
    assert not method.diverged() and all(torch.equal(a, b) for a, b in zip(saved, method.params))
    assert torch.isfinite(method.forward(torch.rand(4, 3, 16, 16))).all()


def test_runner_resets_a_diverged_method_counts_it_and_continues(tmp_path):
    from tta.runner import Run, RunConfig

    spec, checkpoint = blob_protocol(tmp_path, batch_size=20)
    run = Run(RunConfig(protocol=spec, method="test_nan_every_third", checkpoint=checkpoint, n_examples=140,
                        domains=["blur_a", "noise_b"]))
    rows = run.execute()
    # 7 batches per domain; the counter runs across domains: poisoned after batches 3, 6 | 9, 12
    assert [r["extra"]["nonfinite_resets"] for r in rows] == [2, 2]
    assert all(r["n"] == 140 and math.isfinite(r["error"]) and math.isfinite(r["nll"]) for r in rows)
    assert not run.method.diverged()


def test_healthy_methods_report_zero_resets(tmp_path):
    from tta.runner import Run, RunConfig

    spec, checkpoint = blob_protocol(tmp_path)
    rows = Run(RunConfig(protocol=spec, method="tent", checkpoint=checkpoint, n_examples=80,
                         domains=["tint_c"], hparams={"lr": "1e-3"})).execute()
    assert [r["extra"]["nonfinite_resets"] for r in rows] == [0]
    assert rows[0]["hparams"]["lr"] == 1e-3 and rows[0]["hparams"]["optimizer"] == "adam"
