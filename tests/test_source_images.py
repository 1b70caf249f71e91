"""Methods that need clean source images (EATA's Fisher): what the runner hands them, from which
data, and that the rows and the run identity say so; a protocol without such images refuses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tta.data import cifar
from tta.errors import UserError
from tta.methods.eata import EATA
from tta.protocols.smoke import SOURCE_SEED
from tta.data.synthetic import generate
from tta.runner import Run, RunConfig
from tta.store import ResultStore
from tta.streams import shuffled, to_tensor


def _write_batch(path, images: np.ndarray, labels: np.ndarray) -> None:
    cifar.write_batch("cifar10", path, images, labels)


def test_a_written_batch_reads_back_bit_for_bit(tmp_path):
    g = np.random.default_rng(0)
    images, labels = g.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), g.integers(0, 10, 7)
    path = cifar.write_batch("cifar10", tmp_path / "cifar-10-batches-py" / "test_batch", images, labels)
    back, back_labels = cifar.read_test_set("cifar10", tmp_path, fetch_missing=False)
    assert np.array_equal(back, images) and np.array_equal(back_labels, labels)
    assert [p.name for p in path.parent.iterdir()] == ["test_batch"]          # no partial file left
    with pytest.raises(UserError, match="uint8 N x 32 x 32 x 3"):
        cifar.write_batch("cifar10", tmp_path / "x", images[..., :1], labels)


def test_eata_gets_a_seeded_subset_of_the_smoke_training_images_in_run_batches(monkeypatch):
    seen: list[torch.Tensor] = []
    original = EATA.fit_source

    def recording(self, batches, description):
        batches = list(batches)
        seen.extend(batches)
        return original(self, iter(batches), description)

    monkeypatch.setattr(EATA, "fit_source", recording)
    config = RunConfig(protocol="smoke", method="eata", hparams={"fisher_samples": 300}, batch_size=128,
                       n_examples=200, domains=["fog"], seed=3)
    run = Run(config)
    rows = run.execute(store=None)
    images, _ = generate(300, seed=SOURCE_SEED)
    order = shuffled(300, 3, "source-images", 300)
    assert [len(x) for x in seen] == [128, 128, 44]
    assert torch.equal(torch.cat(seen), to_tensor(images[order]))
    assert rows[0]["extra"]["fisher_data"] == "300 procedural smoke training images (generator seed 0)"
    assert run.method.fisher is not None and all(f.abs().sum() > 0 for f in run.method.fisher)


def test_eta_and_eata_without_fisher_read_no_source_images(monkeypatch):
    monkeypatch.setattr(EATA, "fit_source", lambda *a: pytest.fail("fit_source called without a Fisher"))
    rows = Run(RunConfig(protocol="smoke", method="eata", hparams={"fisher_alpha": 0.0}, n_examples=200,
                         domains=["fog"])).execute(store=None)
    assert rows[0]["extra"]["fisher_data"] == "none (fisher_alpha=0)"


def test_cifar_source_images_training_batches_else_clean_test_images_and_identity_follows(
        tmp_path, noise_root, cifar_test, resnet20_checkpoint, store_path):
    images, labels = cifar_test
    root = tmp_path / "data"
    shutil.copytree(noise_root, root)
    config = RunConfig(protocol="cifar10c", method="eata", hparams={"fisher_samples": 200}, n_examples=200,
                       domains=["gaussian_noise"], severity=5, data_root=str(root),
                       checkpoint=resnet20_checkpoint)
    # no CIFAR python batches at all: refused before any work, in one line
    with pytest.raises(UserError, match="needs 200 clean source images for its Fisher regularizer; protocol "
                                        "'cifar10c' has none under") as caught:
        Run(config)
    assert "\n" not in str(caught.value)
    # the clean test batch only: used, and the rows say what it is
    _write_batch(root / "cifar-10-batches-py" / "test_batch", images, labels)
    store = ResultStore(store_path)
    with_test = Run(config)
    rows = with_test.execute(store=store)
    assert rows[0]["extra"]["fisher_data"].startswith("200 clean CIFAR-10 test images (no training batches under")
    # training batches appear (real images, 5 x 400): a new identity, computed afresh, from them
    for i in range(5):
        _write_batch(root / "cifar-10-batches-py" / f"data_batch_{i + 1}", images[i * 400:(i + 1) * 400],
                     labels[i * 400:(i + 1) * 400])
    with_train = Run(config)
    assert with_train.run_key != with_test.run_key
    # the test data is the same (one leaderboard table with eta's rows), the source images are not
    assert with_train.data_fingerprint == with_test.data_fingerprint == Run(
        RunConfig(**{**config.__dict__, "method": "eta", "hparams": {}})).data_fingerprint
    assert with_train.source_fingerprint != with_test.source_fingerprint
    rows = with_train.execute(store=store)
    assert rows[0]["extra"]["fisher_data"] == "200 CIFAR-10 training images"
    assert rows[0]["extra"]["source_fingerprint"] == with_train.source_fingerprint
    assert len(store.finished(with_train.run_key)) == 1 and len(store.finished(with_test.run_key)) == 1


def test_a_protocol_without_source_images_refuses_eata(monkeypatch):
    from tta.protocols.smoke import Smoke

    monkeypatch.setattr(Smoke, "source_images", lambda self, root, n: None)
    with pytest.raises(UserError, match="method 'eata' needs 2000 clean source images"):
        Run(RunConfig(protocol="smoke", method="eata", n_examples=200, domains=["fog"]))
