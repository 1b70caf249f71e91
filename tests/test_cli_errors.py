"""Bad input: one line on stderr, exit code 2, no traceback, no finished result lost."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from helpers import run_cli

from tta.models import create_model

PLUGINS = {
    "raises_on_second_domain.py": '''
from tta.methods.base import Method
from tta.registry import register_method

@register_method("flaky")
class Flaky(Method):
    """Works on the first domain, raises on the second."""
    def setup(self, model):
        super().setup(model)
        self.resets = 0
    def reset_state(self):
        self.resets += 1
    def forward(self, x):
        if self.resets >= 2:
            raise RuntimeError("boom")
        return self.model(x)
''',
    "wrong_shape.py": '''
import torch
from tta.methods.base import Method
from tta.registry import register_method

@register_method("wrong_shape")
class WrongShape(Method):
    """Returns one score per image instead of logits."""
    def forward(self, x):
        return torch.zeros(x.shape[0])
''',
    "broken_import.py": "import this_module_does_not_exist\n",
}


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and len([l for l in lines if l.startswith("error")]) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """A CIFAR-10-C layout of random images: 2 corruptions, 200 examples per severity."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("gaussian_noise", "shot_noise"):
        np.save(folder / f"{name}.npy", rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(10, dtype=np.uint8), 5000))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20_random.pt"
    torch.save({"state_dict": create_model("resnet20", 10).net.state_dict()}, path)
    return str(path)


def base(root, checkpoint, store, *extra):
    return ("--protocol", "cifar10c", "--data-root", str(root), "--checkpoint", checkpoint, "--store", str(store),
            "--n-examples", "200", *extra)


@pytest.mark.parametrize("args, fragments", [
    (("--method", "alpha_bnn"), ("unknown method 'alpha_bnn'", "alpha_bn")),
    (("--method", "source", "--protocol-x"), ("unrecognized arguments",)),
    (("--method", "source", "--batch-size", "0"), ("batch size must be at least 1",)),
    (("--method", "source", "--severity", "7"), ("severity must be 1..5",)),
    (("--method", "source", "--domains", "gausian_noise"), ("no domain 'gausian_noise'", "gaussian_noise")),
    (("--method", "alpha_bn", "--hp", "alpah=0.3"), ("no hyperparameter 'alpah'", "alpha")),
    (("--method", "alpha_bn", "--hp", "alpha=7"), ("outside [0.0, 1.0]",)),
    (("--method", "source", "--model", "resnet2O"), ("unknown model 'resnet2O'", "resnet20")),
    (("--method", "source", "--scenario", "episodc"), ("unknown scenario 'episodc'", "episodic")),
])
def test_bad_names_and_values(args, fragments, small_root, checkpoint, tmp_path):
    result = run_cli("tta.run", *base(small_root, checkpoint, tmp_path / "s.sqlite"), *args)
    assert_one_line_error(result, *fragments)


def test_unknown_protocol_suggests_the_closest(tmp_path):
    assert_one_line_error(run_cli("tta.run", "--method", "source", "--protocol", "cifar10-c"),
                          "unknown protocol 'cifar10-c'", "cifar10c")


def test_missing_data_names_root_layout_and_url(tmp_path, checkpoint):
    (tmp_path / "empty").mkdir()
    result = run_cli("tta.run", *base(tmp_path / "empty", checkpoint, tmp_path / "s.sqlite"), "--method", "source")
    assert_one_line_error(result, "CIFAR-10-C", str(tmp_path / "empty"), "zenodo.org")


def test_truncated_data_file(tmp_path, checkpoint, small_root):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    (folder / "labels.npy").write_bytes((small_root / "CIFAR-10-C" / "labels.npy").read_bytes())
    whole = (small_root / "CIFAR-10-C" / "gaussian_noise.npy").read_bytes()
    (folder / "gaussian_noise.npy").write_bytes(whole[: len(whole) // 3])
    result = run_cli("tta.run", *base(tmp_path, checkpoint, tmp_path / "s.sqlite"), "--method", "source",
                     "--domains", "gaussian_noise")
    assert_one_line_error(result, "gaussian_noise.npy")


def test_checkpoint_that_does_not_fit_the_model(tmp_path, small_root):
    wrong = tmp_path / "resnet32.pt"
    torch.save(create_model("resnet32", 10).net.state_dict(), wrong)
    result = run_cli("tta.run", *base(small_root, str(wrong), tmp_path / "s.sqlite"), "--method", "source")
    assert_one_line_error(result, "does not fit model", "unexpected keys")


def test_corrupt_checkpoint_file(tmp_path, small_root):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    result = run_cli("tta.run", *base(small_root, str(bad), tmp_path / "s.sqlite"), "--method", "source")
    assert_one_line_error(result, "not a readable weights-only PyTorch file")


def test_plugin_that_fails_to_import(tmp_path, small_root, checkpoint):
    plugin = tmp_path / "broken_import.py"
    plugin.write_text(PLUGINS["broken_import.py"])
    result = run_cli("tta.run", *base(small_root, checkpoint, tmp_path / "s.sqlite"), "--method", "source",
                     "--plugin", str(plugin))
    assert_one_line_error(result, "failed to import", "this_module_does_not_exist")


def test_plugin_with_wrong_output_shape(tmp_path, small_root, checkpoint):
    plugin = tmp_path / "wrong_shape.py"
    plugin.write_text(PLUGINS["wrong_shape.py"])
    result = run_cli("tta.run", *base(small_root, checkpoint, tmp_path / "s.sqlite"), "--method", "wrong_shape",
                     "--plugin", str(plugin), "--domains", "gaussian_noise")
    assert_one_line_error(result, "returned (200,)", "(200, 10)")


def test_plugin_that_raises_keeps_the_finished_domain(tmp_path, small_root, checkpoint):
    plugin = tmp_path / "raises_on_second_domain.py"
    plugin.write_text(PLUGINS["raises_on_second_domain.py"])
    store = tmp_path / "s.sqlite"
    result = run_cli("tta.run", *base(small_root, checkpoint, store), "--method", "flaky", "--plugin", str(plugin),
                     "--domains", "gaussian_noise,shot_noise")
    assert_one_line_error(result, "method 'flaky' failed on domain shot_noise-5", "RuntimeError: boom")
    with sqlite3.connect(store) as con:
        rows = con.execute("SELECT domain, n FROM results").fetchall()
    assert rows == [("gaussian_noise-5", 200)]


def test_unwritable_json_path_is_refused_before_any_work(tmp_path, small_root, checkpoint):
    result = run_cli("tta.run", *base(small_root, checkpoint, tmp_path / "s.sqlite"), "--method", "source",
                     "--domains", "gaussian_noise", "--json", str(tmp_path / "no" / "such" / "dir.json"))
    assert_one_line_error(result, "--json", "does not exist")
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store was even created


def test_empty_domain_list_and_unknown_model_without_checkpoint(tmp_path, small_root):
    store = tmp_path / "s.sqlite"
    result = run_cli("tta.run", "--protocol", "cifar10c", "--data-root", str(small_root), "--store", str(store),
                     "--method", "source", "--domains", ",")
    assert_one_line_error(result, "names no domain")
    result = run_cli("tta.run", "--protocol", "cifar10c", "--data-root", str(small_root), "--store", str(store),
                     "--method", "source", "--model", "resnet2O")
    assert_one_line_error(result, "unknown model 'resnet2O'", "resnet20")
    assert not store.exists()


def test_store_whose_parent_is_a_file(tmp_path, small_root, checkpoint):
    (tmp_path / "plain").write_text("a file, not a folder")
    result = run_cli("tta.run", *base(small_root, checkpoint, tmp_path / "plain" / "s.sqlite"), "--method", "source",
                     "--domains", "gaussian_noise")
    assert_one_line_error(result, "cannot create the result store")


def test_corrupt_store_file(tmp_path, small_root, checkpoint):
    store = tmp_path / "s.sqlite"
    store.write_bytes(b"this is not sqlite" * 100)
    result = run_cli("tta.run", *base(small_root, checkpoint, store), "--method", "source",
                     "--domains", "gaussian_noise")
    assert_one_line_error(result, "not a usable SQLite file")


def test_leaderboard_on_missing_store(tmp_path):
    assert_one_line_error(run_cli("tta.leaderboard", "--store", str(tmp_path / "none.sqlite")), "does not exist")
