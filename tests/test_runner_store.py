"""Runner + store: one row per domain x seed, resumable, reproducible, labels only to metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tta.methods.base import Method
from tta.registry import METHODS, register_method
from tta.runner import Run, RunConfig
from tta.store import ResultStore

SMOKE = dict(protocol="smoke", n_examples=200, batch_size=100)


def smoke_run(method="bn_adapt", **changes):
    return Run(RunConfig(**{**SMOKE, "method": method, "domains": ["gaussian_noise", "contrast"], **changes}))


def test_rows_per_domain_then_rerun_skips_and_force_appends(store_path):
    store = ResultStore(store_path)
    rows = smoke_run().execute(store)
    assert [r["domain"] for r in rows] == ["gaussian_noise-5", "contrast-5"]
    assert all(r["n"] == 200 and 0 <= r["error"] <= 100 and r["images_per_s"] > 0 for r in rows)
    first = store.rows()
    again = smoke_run().execute(store)
    assert store.rows() == first  # nothing recomputed, nothing appended
    assert [r["error"] for r in again] == [r["error"] for r in rows]
    smoke_run().execute(store, force=True)
    assert len(store.rows(latest_only=False)) == 4 and len(store.rows()) == 2
    subset = smoke_run(domains=["contrast"]).execute(store)  # same cells: served from the store, only those asked
    assert [r["domain"] for r in subset] == ["contrast-5"] and len(store.rows(latest_only=False)) == 4


def test_each_row_records_what_determines_it(store_path):
    (row,) = smoke_run("alpha_bn", hparams={"alpha": "0.3"}, domains=["fog"], seed=3).execute(ResultStore(store_path))
    stored = ResultStore(store_path).rows()[0]
    for key in ("protocol", "method", "seed", "model", "checkpoint_sha256", "version", "git_rev", "batch_size"):
        assert stored[key] not in (None, ""), key
    assert stored["hparams"] == {"alpha": 0.3} and stored["seed"] == 3 and stored["domain"] == "fog-5"
    assert stored["env"]["torch"] == torch.__version__ and stored["env"]["threads"] >= 1
    assert len(stored["checkpoint_sha256"]) == 64


def test_the_corruption_engine_version_is_part_of_the_identity(store_path, monkeypatch):
    """Smoke domains come from tta's corruption engine: rows name its version, and cells stored
    by another version are never served for this one."""
    from tta.data import corruptions

    store = ResultStore(store_path)
    (row,) = smoke_run(domains=["contrast"]).execute(store)
    assert row["extra"]["corruption_engine"] == corruptions.ENGINE_VERSION
    monkeypatch.setattr(corruptions, "ENGINE_VERSION", corruptions.ENGINE_VERSION + 1)
    later = smoke_run(domains=["contrast"])
    assert later.run_key != row["run_key"]
    (new,) = later.execute(store)
    assert new["extra"]["corruption_engine"] == corruptions.ENGINE_VERSION and len(store.rows()) == 2


def test_same_seed_same_numbers_other_seed_other_stream():
    a = smoke_run("adabn", seed=0).execute()
    b = smoke_run("adabn", seed=0).execute()
    c = smoke_run("adabn", seed=1).execute()
    assert [r["error"] for r in a] == [r["error"] for r in b]
    assert [r["nll"] for r in a] == [r["nll"] for r in b]
    assert [r["nll"] for r in a] != [r["nll"] for r in c]


def test_a_finished_domain_survives_a_crash_and_the_rerun_resumes(store_path):
    calls = {"n": 0}

    @register_method("crash_once_test")
    class CrashOnce(Method):
        """Fails on its first call of the second domain, works afterwards."""

        def setup(self, model):
            super().setup(model)
            self.domains = 0

        def reset_state(self):
            self.domains += 1

        def forward(self, x):
            calls["n"] += 1
            if self.domains == 2 and not calls.get("crashed"):
                calls["crashed"] = True
                raise RuntimeError("simulated crash")
            return self.model(x)

    store = ResultStore(store_path)
    with pytest.raises(Exception, match="simulated crash"):
        smoke_run("crash_once_test").execute(store)
    assert [r["domain"] for r in store.rows()] == ["gaussian_noise-5"]
    kept = store.rows()[0]
    before = calls["n"]
    rows = smoke_run("crash_once_test").execute(store)
    assert [r["domain"] for r in rows] == ["gaussian_noise-5", "contrast-5"]
    assert calls["n"] - before == 2  # only the unfinished domain's two batches ran
    assert store.rows()[0] == kept


def test_methods_receive_images_only():
    seen = []

    @register_method("spy_test")
    class Spy(Method):
        """Records what forward receives."""

        def forward(self, *args, **kwargs):
            seen.append((args, kwargs))
            return self.model(args[0])

    smoke_run("spy_test", domains=["snow"]).execute()
    assert len(seen) == 2
    for args, kwargs in seen:
        assert kwargs == {} and len(args) == 1
        (x,) = args
        assert x.dtype == torch.float32 and x.shape == (100, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_stream_order_is_a_function_of_the_seed():
    from tta.streams import shuffled

    assert np.array_equal(shuffled(1000, 5, "fog-5"), shuffled(1000, 5, "fog-5"))
    assert not np.array_equal(shuffled(1000, 5, "fog-5"), shuffled(1000, 6, "fog-5"))
    assert not np.array_equal(shuffled(1000, 5, "fog-5"), shuffled(1000, 5, "fog-4"))
    assert sorted(shuffled(1000, 5, "fog-5")) == list(range(1000))


def test_json_output_and_leaderboard(tmp_path, store_path):
    from helpers import run_cli

    out = tmp_path / "rows.json"
    for method in ("source", "bn_adapt"):
        result = run_cli("tta.run", "--method", method, "--protocol", "smoke", "--domains", "fog,contrast",
                         "--n-examples", "200", "--store", str(store_path), "--json", str(out))
        assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["domain"] for r in rows] == ["fog-5", "contrast-5"]
    assert all({"domain", "error", "n", "images_per_s"} <= set(r) for r in rows)
    board = run_cli("tta.leaderboard", "--store", str(store_path), "--out", str(tmp_path / "lb"))
    assert board.returncode == 0, board.stderr
    text = (tmp_path / "lb" / "smoke.md").read_text()
    assert "| fog-5" in text.replace("|   ", "| ") or "fog-5" in text
    assert "bn_adapt" in text and "source" in text
    # one seed each: no spread is known, so nothing is bold and the note says why
    assert text.count("**") == 0 and "no seed spread is known, so no value is bold" in text


def test_cifar10c_is_generated_when_only_cifar10_is_present(tmp_path):
    """No CIFAR-10-C folder, but CIFAR-10 in torchvision's layout: the reader builds and records it."""
    import pickle

    from tta.data.synthetic import generate

    images, labels = generate(300, seed=5)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(300, -1), "labels": labels.tolist()}, handle)
    torch.manual_seed(0)
    checkpoint = tmp_path / "random.pt"
    from tta.models import create_model

    torch.save(create_model("resnet20", 10).net.state_dict(), checkpoint)
    config = RunConfig(protocol="cifar10c", method="source", data_root=str(tmp_path), checkpoint=str(checkpoint),
                       domains=["brightness", "contrast"], severity=2)
    rows = Run(config).execute()
    assert [(r["domain"], r["n"], r["data_source"]) for r in rows] == [("brightness-2", 300, "generated"),
                                                                       ("contrast-2", 300, "generated")]
    from tta.data.corruptions import ENGINE_VERSION

    assert all(r["extra"]["corruption_engine"] == ENGINE_VERSION for r in rows)
    from tta.data.build_c import generated_c_dir

    generated = generated_c_dir("cifar10", tmp_path)
    assert sorted(p.name for p in generated.glob("*.npy")) == ["brightness.npy", "contrast.npy", "labels.npy"]
    assert not (tmp_path / "CIFAR-10-C").exists()


def test_git_revision_is_dirty_for_code_changes_not_for_written_results(tmp_path, monkeypatch):
    """Regenerating the committed store must not mark its own rows ``+dirty``."""
    import subprocess

    from tta import environment

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "results.sqlite").write_bytes(b"old")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(environment, "CHECKOUT_ROOT", tmp_path)

    def revision():
        environment.git_revision.cache_clear()
        return environment.git_revision()

    clean = revision()
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "leaderboard" / "results.sqlite").write_bytes(b"new rows")
    assert revision() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert revision() == clean + "+dirty"
    environment.git_revision.cache_clear()
