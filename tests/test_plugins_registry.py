"""Registry lookups, the three plugin routes, and --list."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli, fake_distribution

from tta import plugins
from tta.errors import UserError
from tta.registry import METHODS
from tta.runner import Run, RunConfig

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "methods" / "example_plugin"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UserError, match=r"unknown method 'bnadapt'; did you mean bn_adapt"):
        METHODS.get("bnadapt")


def test_entry_point_plugin_is_found_and_runs(tmp_path, monkeypatch):
    """A distribution on sys.path that declares a ``tta.methods`` entry point (the example plugin)."""
    fake_distribution(tmp_path, monkeypatch, "tta-example-plugin", "tta.methods",
                      "ema_bn = tta_example_plugin.ema_bn:EMABatchNormMethod")
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    assert "ema_bn" in plugins.load_entry_points()
    rows = {}
    for momentum in ("0.0", "1.0", "0.1"):
        (row,) = Run(RunConfig(protocol="smoke", method="ema_bn", hparams={"momentum": momentum}, domains=["contrast"],
                               n_examples=400, batch_size=100)).execute()
        rows[momentum] = row["error"]
    (source,) = Run(RunConfig(protocol="smoke", method="source", domains=["contrast"], n_examples=400)).execute()
    (bn_adapt,) = Run(RunConfig(protocol="smoke", method="bn_adapt", domains=["contrast"], n_examples=400,
                                batch_size=100)).execute()
    assert rows["0.0"] == source["error"]
    assert rows["1.0"] == pytest.approx(bn_adapt["error"], abs=0.25)
    assert rows["0.1"] < source["error"]


def test_drop_in_directory_and_plugin_flag(tmp_path, monkeypatch):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "scaled.py").write_text(textwrap.dedent('''
        from tta.methods.base import Method
        from tta.registry import register_method

        @register_method("halved_logits_test")
        class Halved(Method):
            """Source logits divided by two (same predictions)."""
            def forward(self, x):
                return self.model(x) / 2
    '''))
    monkeypatch.setenv("TTA_PLUGIN_PATH", str(folder))
    plugins.load_drop_ins()
    (half,) = Run(RunConfig(protocol="smoke", method="halved_logits_test", domains=["fog"], n_examples=200)).execute()
    (full,) = Run(RunConfig(protocol="smoke", method="source", domains=["fog"], n_examples=200)).execute()
    assert half["error"] == full["error"] and half["nll"] != full["nll"]
    listing = run_cli("tta.run", "--list", "--plugin", str(folder / "scaled.py"))
    assert listing.returncode == 0 and "halved_logits_test" in listing.stdout


def test_list_shows_methods_protocols_models_scenarios():
    out = run_cli("tta.run", "--list").stdout
    for name in ("source", "bn_adapt", "adabn", "alpha_bn", "cifar10c", "smoke", "resnet20", "wrn28_10", "episodic",
                 "continual"):
        assert name in out, name


def test_plugin_classes_never_leak_between_registries():
    assert all(isinstance(cls, type) for _, cls in METHODS.items())
    assert "torch" in sys.modules and torch.__version__


def test_dataset_reader_entry_point_is_registered_validated_and_runs(tmp_path, monkeypatch):
    """A ``tta.datasets`` entry point naming a reader class: registered under its name, and its
    data passes the same validation as the built-in readers' (a wrong image size is refused)."""
    package = tmp_path / "tta_reader_plugin_test"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import numpy as np\n"
        "from tta.protocols.base import DatasetReader, DomainData\n"
        "class Tiny(DatasetReader):\n"
        "    domains = ('clean',)\n"
        "    has_severity = False\n"
        "    image_size = (32, 32)\n"
        "    def data_files(self, domains, root):\n"
        "        return []\n"
        "    def load(self, domain, root):\n"
        "        rng = np.random.default_rng(0)\n"
        "        size = int(__import__('os').environ.get('TINY_SIZE', '32'))\n"
        "        return DomainData(rng.integers(0, 256, (40, size, size, 3), dtype=np.uint8),\n"
        "                          np.arange(40) % 10, 'procedural')\n")
    fake_distribution(tmp_path, monkeypatch, "tta-reader-plugin-test", "tta.datasets",
                      "tiny_reader_test = tta_reader_plugin_test:Tiny")
    assert "tiny_reader_test" in plugins.load_dataset_entry_points()
    spec = tmp_path / "tiny.toml"
    spec.write_text('description = "tiny"\ndataset = "tiny_reader_test"\nnum_classes = 10\nmodel = "smoke_cnn"\n'
                    'checkpoint = "builtin:smoke_cnn"\nbatch_size = 20\n')
    (row,) = Run(RunConfig(protocol=str(spec), method="source")).execute()
    assert row["n"] == 40 and 0 <= row["error"] <= 100
    monkeypatch.setenv("TINY_SIZE", "16")
    with pytest.raises(UserError, match="16 x 16 x 3"):
        Run(RunConfig(protocol=str(spec), method="source")).execute()
