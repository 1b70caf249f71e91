"""Scenarios: segments, resets, seeded orders (gradual, mixed, dirichlet), parameters, batch size 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scenario_fixtures import BLOB_DOMAINS, BlobReader, blob_protocol
from tta.errors import UserError
from tta.protocols.base import Protocol
from tta.protocols.spec import ProtocolSpec
from tta.scenarios import StreamSettings, create_scenario, dirichlet_order
from tta.types import Domain


def _protocol() -> Protocol:
    spec = ProtocolSpec(name="blobs", dataset="test_blobs", description="", num_classes=10, model="resnet20")
    return Protocol(spec, BlobReader(), Path("/nonexistent"))


def _segments(scenario: str, seed: int = 0, n: int | None = None, batch: int = 40, domains=BLOB_DOMAINS[:2]):
    settings = StreamSettings(batch, seed, n, "cpu")
    return list(create_scenario(scenario).segments(_protocol(), [Domain(d, 5) for d in domains], settings))


def _stream(segment) -> tuple[np.ndarray, np.ndarray]:
    batches, _ = segment.open()
    index, labels = zip(*((b.index.numpy(), b.y.numpy()) for b in batches))
    return np.concatenate(index), np.concatenate(labels)


def test_episodic_and_continual_reset_points():
    assert [s.reset_before for s in _segments("episodic")] == [True, True]
    assert [s.reset_before for s in _segments("continual")] == [True, False]


def test_gradual_runs_each_corruption_up_and_down_without_resets():
    segments = _segments("gradual")
    keys = [s.key for s in segments]
    assert keys[:9] == ["blur_a-1", "blur_a-2", "blur_a-3", "blur_a-4", "blur_a-5",
                        "blur_a-4-down", "blur_a-3-down", "blur_a-2-down", "blur_a-1-down"]
    assert keys[9] == "noise_b-1" and len(keys) == 18 == len(set(keys))
    assert [s.severity for s in segments[:9]] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    assert [s.reset_before for s in segments] == [True] + [False] * 17
    # each visit streams its own severity's images
    low, _ = segments[0].open()
    high, _ = segments[4].open()
    assert not torch.equal(next(iter(low)).x, next(iter(high)).x)


def test_mixed_streams_every_capped_example_once_in_a_seeded_order():
    segment, = _segments("mixed", n=100, domains=BLOB_DOMAINS)
    assert segment.key == "mixed" and segment.severity == 5
    index, labels = _stream(segment)
    assert sorted(index) == list(range(300))  # 3 domains x 100, each exactly once
    again, _ = _stream(_segments("mixed", n=100, domains=BLOB_DOMAINS)[0])
    other, _ = _stream(_segments("mixed", seed=1, n=100, domains=BLOB_DOMAINS)[0])
    assert np.array_equal(index, again) and not np.array_equal(index, other)
    owners = np.asarray(index) // 100  # the three domains are interleaved, not in blocks
    assert len(set(owners[:30])) == 3


def test_mixed_reports_error_per_domain():
    segment, = _segments("mixed", n=60, domains=BLOB_DOMAINS)
    batches, _ = segment.open()
    for batch in batches:
        owner = batch.index // 60  # first domain: predicted right, the others wrong
        logits = torch.nn.functional.one_hot(torch.where(owner == 0, batch.y, (batch.y + 1) % 10), 10).float()
        segment.observe(batch, logits)
    assert segment.extra()["domain_error"] == {"blur_a-5": 0.0, "noise_b-5": 100.0, "tint_c-5": 100.0}


def test_dirichlet_order_is_a_seeded_permutation_with_long_class_runs():
    labels = np.repeat(np.arange(10), 100)
    order = dirichlet_order(labels, 0.1, np.random.default_rng(0))
    assert sorted(order) == list(range(1000))
    assert np.array_equal(order, dirichlet_order(labels, 0.1, np.random.default_rng(0)))
    same_as_next = lambda o: np.mean(labels[o][1:] == labels[o][:-1])  # noqa: E731
    iid = np.random.default_rng(0).permutation(1000)
    assert same_as_next(order) > 0.8 > 0.2 > same_as_next(iid)
    # RoTTA's slots: with a large delta every window of 100 holds the 10 classes about equally
    # (in class blocks); with a small one a window is dominated by one class
    top_share = lambda o: np.mean([np.bincount(labels[o][s:s + 100]).max() / 100 for s in range(0, 1000, 100)])  # noqa: E731
    assert top_share(dirichlet_order(labels, 1e4, np.random.default_rng(0))) < 0.25
    assert top_share(order) > 0.35  # i.i.d.: about 0.15


def test_dirichlet_scenario_keeps_the_capped_subset_and_records_delta():
    segment = _segments("dirichlet:delta=0.05", n=120)[0]
    index, labels = _stream(segment)
    episodic_index, _ = _stream(_segments("episodic", n=120)[0])
    assert sorted(index) == sorted(episodic_index)  # same examples, other order
    assert np.mean(labels[1:] == labels[:-1]) > 0.7
    assert create_scenario("dirichlet:delta=0.05").label == "dirichlet:delta=0.05"
    assert create_scenario("dirichlet").label == "dirichlet:delta=0.1"
    assert create_scenario("episodic").label == "episodic"


@pytest.mark.parametrize("text, message", [("dirichlet:gamma=1", "no hyperparameter 'gamma'"),
                                           ("dirichlet:delta=-1", "outside"), ("dirichlet:delta", "key=value"),
                                           ("dirichlt", "did you mean dirichlet")])
def test_bad_scenario_parameters_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        create_scenario(text)


def test_runner_rows_record_scenario_label_per_domain_extra_and_batch_size_one(tmp_path):
    from tta.runner import Run, RunConfig

    spec, checkpoint = blob_protocol(tmp_path)
    mixed = Run(RunConfig(protocol=spec, method="bn_adapt", checkpoint=checkpoint, scenario="mixed", n_examples=40))
    row, = mixed.execute()
    assert row["scenario"] == "mixed" and row["n"] == 120 and row["extra"]["nonfinite_resets"] == 0
    assert set(row["extra"]["domain_error"]) == {f"{d}-5" for d in BLOB_DOMAINS}
    dirichlet = Run(RunConfig(protocol=spec, method="alpha_bn", checkpoint=checkpoint,
                              scenario="dirichlet:delta=0.01", n_examples=40, batch_size=1))
    rows = dirichlet.execute()
    assert {r["scenario"] for r in rows} == {"dirichlet:delta=0.01"} and {r["batch_size"] for r in rows} == {1}
    assert all(r["n"] == 40 and np.isfinite(r["error"]) for r in rows)
    assert dirichlet.run_key != Run(RunConfig(protocol=spec, method="alpha_bn", checkpoint=checkpoint,
                                              scenario="dirichlet", n_examples=40, batch_size=1)).run_key


def test_bn_adapt_at_batch_one_uses_each_images_own_spatial_statistics(tmp_path):
    """Decision: bn_adapt runs at batch 1 on conv nets (per-image statistics over H x W);
    its prediction for an image then does not depend on the rest of the stream."""
    from tta.runner import Run, RunConfig

    spec, checkpoint = blob_protocol(tmp_path)
    run = Run(RunConfig(protocol=spec, method="bn_adapt", checkpoint=checkpoint, batch_size=1, n_examples=5,
                        domains=["blur_a"]))
    run.method.setup(run.model)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    alone = torch.cat([run.method.forward(x[i:i + 1]) for i in range(3)])
    assert torch.isfinite(alone).all()
    shuffled_alone = torch.cat([run.method.forward(x[i:i + 1]) for i in (2, 0, 1)])
    assert torch.equal(alone[[2, 0, 1]], shuffled_alone)
    assert not torch.allclose(alone, run.method.forward(x))  # a batch of 3 normalizes jointly
