"""Bad input and faults of issue 18, each refused in one line or scored honestly, never a traceback:

* a CIFAR python batch carrying a ``__reduce__`` payload is refused and the payload never runs;
* data of the wrong shape, channels, dtype or labels is refused on load, naming the file;
* non-finite logits from a method are scored as wrong and counted (``extra.nonfinite_logits``);
* ``nan`` / ``inf`` hyperparameters, unreadable checkpoints, plugins calling ``sys.exit``,
  a data root that does not exist: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import sqlite3
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from scenario_fixtures import blob_protocol
from test_cli_errors import assert_one_line_error

from tta.data import cifar
from tta.errors import UserError
from tta.hparams import HParam
from tta.metrics import ClassificationMetrics
from tta.models import create_model
from tta.models.checkpoint import read_state_dict
from tta.protocols import Protocol, find_spec
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS, METHODS, register_method
from tta.segmentation_metrics import SegmentationMetrics
from tta.types import Domain


# -- shared fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20_random.pt"
    torch.save(create_model("resnet20", 10).net.state_dict(), path)
    return str(path)


def c10c_root(root: Path, images: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    """``<root>/CIFAR-10-C/<name>.npy`` (5 severity blocks of ``images[name]``) + ``labels.npy``."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    for name, block in images.items():
        np.save(folder / f"{name}.npy", np.concatenate([block] * 5))
    np.save(folder / "labels.npy", np.tile(labels, 5))
    return root


def random_images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def run_args(root: Path, checkpoint: str, *extra: str) -> tuple[str, ...]:
    return ("--protocol", "cifar10c", "--data-root", str(root), "--checkpoint", checkpoint, "--no-store",
            "--n-examples", "20", *extra)


# -- 1. no code runs from a CIFAR batch -----------------------------------------------------------

class Payload:
    """Unpickling it calls ``os.system`` (writes ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalPayload(Payload):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').write('ran')",)


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as the authors' cPickle files hold their arrays."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_batch(root: Path, payload: bytes) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_batch").write_bytes(payload)
    return root


@pytest.mark.parametrize("payload_cls", [Payload, EvalPayload])
@pytest.mark.parametrize("where", ["data", "labels"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, payload_cls, where):
    marker = tmp_path / "payload_ran"
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    batch[where] = payload_cls(marker) if where == "data" else [0, payload_cls(marker)]
    root = write_batch(tmp_path, pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match="refused without running it") as caught:
        cifar.read_test_set("cifar10", root, fetch_missing=False)
    assert "test_batch" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_pickle_payload_through_make_c_is_one_line_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    root = write_batch(tmp_path / "data", pickle.dumps({"data": Payload(marker)}, protocol=2))
    result = run_cli("tta.data.make_c", "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp_path / "o"),
                     "--corruptions", "fog", "--jobs", "1", "--quiet")
    assert_one_line_error(result, "test_batch", "refused without running it")
    assert not marker.exists()


@pytest.mark.parametrize("pickler", ["python2", 2, 5])
def test_genuine_format_batch_still_reads(tmp_path, cifar_test, pickler):
    """The real files: Python 2 cPickle, protocol 2, a dict with a uint8 N x 3072 array (channel-major
    rows) and a list of int labels; re-pickled by Python 3 (protocol 2, or 5 as numpy writes
    arrays there) the keys and strings are bytes."""
    images, labels = cifar_test[0][:64], cifar_test[1][:64]
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in labels],
             b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), b"filenames": [b"x.png"] * len(images)}
    buffer = io.BytesIO()
    if pickler == "python2":
        Py2Pickler(buffer, protocol=2).dump(batch)
    else:
        pickle.dump(batch, buffer, protocol=pickler)
    read_images, read_labels = cifar.read_test_set("cifar10", write_batch(tmp_path, buffer.getvalue()), fetch_missing=False)
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)


def test_batch_with_out_of_range_label_is_refused(tmp_path):
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}
    with pytest.raises(UserError, match="holds label 12; CIFAR-10 labels are 0..9"):
        cifar.read_test_set("cifar10", write_batch(tmp_path, pickle.dumps(batch, protocol=2)), fetch_missing=False)


# -- 2. data validated on load -------------------------------------------------------------------

@pytest.mark.parametrize("shape, held", [
    ((20, 16, 16, 3), "16 x 16 x 3 uint8"),
    ((20, 32, 32, 1), "32 x 32 x 1 uint8"),
    ((20, 32, 32), "32 x 32 uint8"),
])
def test_cifar_c_file_of_wrong_image_shape_is_refused(tmp_path, shape, held):
    root = c10c_root(tmp_path, {"fog": random_images(shape)}, np.arange(20, dtype=np.uint8) % 10)
    protocol = Protocol.create(find_spec("cifar10c"), root)
    with pytest.raises(UserError) as caught:
        protocol.reader.load(Domain("fog", 5), root)
    message = str(caught.value)
    assert str(root / "CIFAR-10-C" / "fog.npy") in message
    assert f"holds 20 images of {held}" in message and "expected N x 32 x 32 x 3 uint8" in message


def test_cifar_c_float_images_are_refused(tmp_path):
    root = c10c_root(tmp_path, {"fog": random_images((20, 32, 32, 3)).astype(np.float32)}, np.zeros(20, np.uint8))
    with pytest.raises(UserError, match="32 x 32 x 3 float32; expected N x 32 x 32 x 3 uint8"):
        Protocol.create(find_spec("cifar10c"), root).reader.load(Domain("fog", 5), root)


def test_valid_cifar_c_file_loads_with_int64_labels(tmp_path):
    root = c10c_root(tmp_path, {"fog": random_images((20, 32, 32, 3))}, np.arange(20, dtype=np.uint8) % 10)
    data = Protocol.create(find_spec("cifar10c"), root).reader.load(Domain("fog", 5), root)
    assert data.images.shape == (20, 32, 32, 3) and data.labels.dtype == np.int64
    assert data.labels.tolist() == [i % 10 for i in range(20)]


def test_wrong_data_is_refused_end_to_end_and_nothing_is_stored(tmp_path, checkpoint):
    root = c10c_root(tmp_path / "data", {"fog": random_images((20, 16, 16, 3))}, np.arange(20, dtype=np.uint8) % 10)
    store = tmp_path / "s.sqlite"
    args = [a for a in run_args(root, checkpoint, "--method", "source", "--domains", "fog") if a != "--no-store"]
    result = run_cli("tta.run", *args, "--store", str(store))
    assert_one_line_error(result, "fog.npy", "16 x 16 x 3 uint8", "expected N x 32 x 32 x 3 uint8")
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone() == (0,)


def test_label_out_of_range_is_one_line_not_an_index_error(tmp_path, checkpoint):
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[7] = 12
    root = c10c_root(tmp_path, {"fog": random_images((20, 32, 32, 3))}, labels)
    result = run_cli("tta.run", *run_args(root, checkpoint, "--method", "source", "--domains", "fog"))
    assert_one_line_error(result, "labels.npy", "holds label 12", "labels must be 0..9")
    assert "IndexError" not in result.stderr


class PluginReader(DatasetReader):
    """A plugin's reader whose ``load`` returns what the test puts in ``PluginReader.data``."""

    domains = ("only",)
    has_severity = False
    data: DomainData | None = None

    def load(self, domain, root):
        return PluginReader.data


if "test_plugin_reader" not in DATASETS:
    DATASETS.add("test_plugin_reader", PluginReader)


def plugin_protocol(tmp_path: Path, task: str = "classification", num_classes: int = 10) -> Protocol:
    spec = tmp_path / "plugin.toml"
    spec.write_text(f'description = "t"\ndataset = "test_plugin_reader"\nnum_classes = {num_classes}\n'
                    f'model = "resnet20"\ntask = "{task}"\n')
    return Protocol.create(find_spec(str(spec)), tmp_path)


@pytest.mark.parametrize("images, labels, fragment", [
    (random_images((4, 8, 8, 3)).astype(np.float64), np.arange(4), "8 x 8 x 3 float64; expected N x H x W x 3 uint8"),
    (random_images((4, 8, 8, 4)), np.arange(4), "8 x 8 x 4 uint8; expected N x H x W x 3 uint8"),
    (random_images((4, 8, 8, 3)), np.arange(5), "holds 4 images but 5 labels"),
    (random_images((4, 8, 8, 3)), np.array([0, 1, -1, 3]), "holds label -1"),
    (random_images((4, 8, 8, 3)), np.array([0, 1, 10, 3]), "holds label 10 (1 labels out of range); protocol 'plugin' has 10 classes"),
    (random_images((4, 8, 8, 3)), np.array([0.0, 1.0, 2.0, 3.0]), "labels of 4 float64; expected N class indices"),
    (random_images((0, 8, 8, 3)), np.zeros(0, np.int64), "holds no examples"),
])
def test_plugin_readers_are_validated_through_the_base_class(tmp_path, images, labels, fragment):
    protocol = plugin_protocol(tmp_path)
    PluginReader.data = DomainData(images, labels, "plugin")
    with pytest.raises(UserError) as caught:
        protocol.reader.load(Domain("only"), tmp_path)
    assert fragment in str(caught.value) and "PluginReader, domain only" in str(caught.value)


def test_segmentation_labels_allow_the_ignore_index_only(tmp_path):
    protocol = plugin_protocol(tmp_path, task="segmentation", num_classes=7)
    maps = np.full((2, 8, 8), 255, dtype=np.uint8)
    maps[:, :4] = 6
    PluginReader.data = DomainData(random_images((2, 8, 8, 3)), maps, "plugin")
    assert protocol.reader.load(Domain("only"), tmp_path).labels is maps  # 255 = ignored: fine
    maps[1, 7, 7] = 9
    with pytest.raises(UserError, match=r"holds label 9 .*labels must be 0..6 or 255 \(ignored\)"):
        protocol.reader.load(Domain("only"), tmp_path)


def test_a_reader_that_is_no_dataset_reader_is_refused(tmp_path):
    class Duck:
        domains = ("only",)

    with pytest.raises(UserError, match="does not subclass tta.protocols.base.DatasetReader"):
        Protocol(find_spec("smoke"), Duck(), tmp_path)


# -- 3. non-finite logits are scored, not fatal -----------------------------------------------------

def test_non_finite_rows_are_wrong_and_uniform_for_nll_and_ece():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    metrics = ClassificationMetrics(num_classes=3)
    metrics.update(logits, labels)
    out = metrics.compute()
    probs = logits[:2].softmax(1)
    nll = (-probs[0, 0].log() - probs[1, 1].log() + 2 * math.log(3)) / 4
    assert out["error"] == pytest.approx(50.0) and out["extra"]["nonfinite_logits"] == 2
    assert out["nll"] == pytest.approx(float(nll), rel=1e-6)
    # confidences: p0, p1 (right), 1/3 twice (wrong): per-bin |acc - conf|
    conf = [float(probs[0, 0]), float(probs[1, 1])]
    bins = {}
    for c, right in [(conf[0], 1), (conf[1], 1), (1 / 3, 0), (1 / 3, 0)]:
        b = min(int(c * 15), 14)
        acc, s = bins.get(b, (0, 0.0))
        bins[b] = (acc + right, s + c)
    assert out["ece"] == pytest.approx(100 * sum(abs(a - s) for a, s in bins.values()) / 4, rel=1e-5)


def test_segmentation_non_finite_pixels_count_as_misses():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, :] = 5.0  # top row: class 0
    logits[0, 1, 1, :] = 5.0  # bottom row: class 1
    logits[0, :, 1, 1] = float("nan")  # one bottom pixel has no prediction
    labels = torch.tensor([[[0, 0], [1, 1]]])
    metrics = SegmentationMetrics(num_classes=2)
    metrics.update(logits, labels)
    out = metrics.compute()
    assert out["extra"]["nonfinite_logits"] == 1
    assert out["extra"]["iou"] == pytest.approx([100.0, 50.0])  # class 1: 1 hit / (2 labelled + 0 false pos)
    assert out["extra"]["pixel_accuracy"] == pytest.approx(75.0)
    assert math.isfinite(out["nll"]) and math.isfinite(out["ece"])


if "test_nan_rows" not in METHODS:
    from tta.methods.source import Source

    @register_method("test_nan_rows")
    class NaNRows(Source):
        """Source model whose logits are NaN for the first quarter of every batch (test-only)."""

        def forward(self, x):
            logits = super().forward(x).clone()
            logits[: len(x) // 4] = float("nan")
            return logits


def test_method_returning_nan_for_part_of_a_batch_is_counted_in_the_row(tmp_path):
    from tta.runner import Run, RunConfig

    spec, ckpt = blob_protocol(tmp_path, batch_size=40)
    rows = Run(RunConfig(protocol=spec, method="test_nan_rows", checkpoint=ckpt, n_examples=120,
                         domains=["blur_a"])).execute()
    clean = Run(RunConfig(protocol=spec, method="source", checkpoint=ckpt, n_examples=120, domains=["blur_a"])).execute()
    row = rows[0]
    assert row["n"] == 120 and row["extra"]["nonfinite_logits"] == 30  # 10 of every 40
    assert clean[0]["extra"]["nonfinite_logits"] == 0
    assert math.isfinite(row["error"]) and math.isfinite(row["nll"]) and math.isfinite(row["ece"])
    assert row["error"] >= clean[0]["error"]  # the NaN rows are wrong, whatever the source got right


NAN_PLUGIN = '''
import torch
from tta.methods.base import Method
from tta.registry import register_method

@register_method("nan_plugin")
class NaNPlugin(Method):
    """Logits NaN for every other example."""
    def forward(self, x):
        logits = self.model(x).clone()
        logits[::2] = float("nan")
        return logits
'''


def test_nan_plugin_end_to_end_exits_0_and_reports_the_count(tmp_path, checkpoint):
    root = c10c_root(tmp_path / "data", {"fog": random_images((20, 32, 32, 3))}, np.arange(20, dtype=np.uint8) % 10)
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp_path / "rows.json"
    result = run_cli("tta.run", *run_args(root, checkpoint, "--method", "nan_plugin", "--plugin", str(plugin),
                                          "--domains", "fog", "--json", str(out)))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    [row] = json.loads(out.read_text())
    assert row["extra"]["nonfinite_logits"] == 10 and row["n"] == 20 and row["error"] >= 50.0


# -- 4. non-finite hyperparameters ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_float_hyperparameters_are_refused(value):
    with pytest.raises(UserError, match="must be a finite number"):
        HParam(0.5, low=0.0, high=1.0).coerce("alpha", value)
    with pytest.raises(UserError, match="must be a finite number"):
        HParam(1e-3).coerce("lr", value)  # no bounds declared: still refused


def test_hp_nan_on_the_command_line(tmp_path, checkpoint):
    result = run_cli("tta.run", *run_args(tmp_path, checkpoint, "--method", "alpha_bn", "--hp", "alpha=nan"))
    assert_one_line_error(result, "hyperparameter alpha=nan must be a finite number")


def test_scenario_parameter_nan_is_refused():
    from tta.scenarios import create_scenario

    with pytest.raises(UserError, match="finite"):
        create_scenario("dirichlet:delta=nan")


# -- 5. unreadable checkpoints ------------------------------------------------------------------------

def _checkpoint_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\nsecond line\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(3)}, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with_numpy = tmp_path / "with_numpy.pt"
    torch.save({"w": torch.zeros(3), "stats": np.zeros(3)}, with_numpy)
    return {"text": text, "empty": empty, "truncated": truncated, "numpy": with_numpy}


@pytest.mark.parametrize("kind, fragment", [
    ("text", "neither a zip archive nor a pickle"),
    ("empty", "is an empty file"),
    ("truncated", "not a readable weights-only PyTorch file (RuntimeError"),
    ("numpy", "Unsupported global: GLOBAL numpy"),
])
def test_unreadable_checkpoint_is_one_plain_line(tmp_path, kind, fragment):
    path = _checkpoint_files(tmp_path)[kind]
    assert zipfile.is_zipfile(path) == (kind == "numpy")
    with pytest.raises(UserError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert fragment in message and str(path) in message
    assert "\n" not in message and "\x1b" not in message and "weights_only=False" not in message


def test_text_checkpoint_on_the_command_line(tmp_path):
    path = _checkpoint_files(tmp_path)["text"]
    (tmp_path / "data").mkdir()
    result = run_cli("tta.run", *run_args(tmp_path / "data", str(path), "--method", "source"))
    assert_one_line_error(result, "notes.txt", "not a readable weights-only PyTorch file")


# -- 6. plugins calling sys.exit ------------------------------------------------------------------

def test_plugin_calling_sys_exit_at_import_is_named(tmp_path):
    from tta.plugins import load_file

    plugin = tmp_path / "quits.py"
    plugin.write_text('import sys\nsys.exit("this plugin needs a GPU")\n')
    with pytest.raises(UserError, match=r"plugin file .*quits.py' failed to import: it called "
                                        r"sys.exit\('this plugin needs a GPU'\)"):
        load_file(plugin)
    result = run_cli("tta.run", "--plugin", str(plugin), "--list")
    assert_one_line_error(result, "quits.py", "sys.exit('this plugin needs a GPU')")


EXIT_IN_FORWARD = '''
import sys
from tta.methods.base import Method
from tta.registry import register_method

@register_method("exits")
class Exits(Method):
    """Calls sys.exit from forward."""
    def forward(self, x):
        sys.exit("out of memory, giving up")
'''

EXIT_IN_SETUP = EXIT_IN_FORWARD.replace('    def forward(self, x):\n        sys.exit("out of memory, giving up")',
                                        '    def setup(self, model):\n        sys.exit("no GPU here")\n'
                                        '    def forward(self, x):\n        return self.model(x)')


@pytest.mark.parametrize("source, fragments", [
    (EXIT_IN_FORWARD, ("method 'exits' failed on domain fog-5", "SystemExit: out of memory, giving up")),
    (EXIT_IN_SETUP, ("no GPU here",)),
])
def test_plugin_method_calling_sys_exit_during_the_run(tmp_path, checkpoint, source, fragments):
    root = c10c_root(tmp_path / "data", {"fog": random_images((20, 32, 32, 3))}, np.arange(20, dtype=np.uint8) % 10)
    plugin = tmp_path / "exits.py"
    plugin.write_text(source)
    result = run_cli("tta.run", *run_args(root, checkpoint, "--method", "exits", "--plugin", str(plugin),
                                          "--domains", "fog"))
    assert_one_line_error(result, *fragments)


# -- 7. a data root that does not exist --------------------------------------------------------------

def test_missing_data_root_is_refused_and_not_created(tmp_path):
    missing = tmp_path / "no_such_root"
    result = run_cli("tta.run", "--method", "source", "--protocol", "smoke", "--data-root", str(missing), "--no-store")
    assert_one_line_error(result, f"data root {missing} does not exist")
    assert not missing.exists()
    result = run_cli("tta.run", "--method", "source", "--protocol", "cifar10c", "--no-store",
                     env={"TTA_DATA": str(missing)})
    assert_one_line_error(result, f"data root {missing} does not exist")
    assert not missing.exists()


def test_data_root_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "root.txt"
    afile.write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        Protocol.create(find_spec("cifar10c"), afile)


def test_cifar_download_into_a_missing_root_is_refused(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist"):
        cifar.fetch("cifar10", missing)
    assert not missing.exists()
