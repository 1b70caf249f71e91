"""python -m tta.data.make_c: official layout, determinism, resumability, one-line errors."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tta.data import build_c, cifar, make_c
from tta.data.corruptions import corrupt
from tta.errors import UserError


@pytest.fixture()
def root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(12, -1), "labels": labels.tolist()}, handle)
    return tmp_path / "data", images, labels


def test_official_layout_and_deterministic_rows(root, tmp_path):
    data, images, labels = root
    out = build_c.build_cifar("cifar10", tmp_path / "out", data, ("contrast", "gaussian_noise"), seed=3, quiet=True)
    lab = np.load(out / "labels.npy")
    assert lab.dtype == np.uint8 and np.array_equal(lab, np.tile(labels, 5))
    arr = np.load(out / "contrast.npy", mmap_mode="r")
    assert arr.shape == (60, 32, 32, 3) and arr.dtype == np.uint8
    for s in range(1, 6):
        assert np.array_equal(arr[(s - 1) * 12:s * 12], corrupt(images, "contrast", s))
    again = build_c.build_cifar("cifar10", tmp_path / "again", data, ("gaussian_noise",), seed=3, quiet=True)
    assert (out / "gaussian_noise.npy").read_bytes() == (again / "gaussian_noise.npy").read_bytes()
    assert not list(out.glob(".*tmp"))


def test_resumes_and_skips_finished(root, tmp_path):
    data, _, _ = root
    out = build_c.build_cifar("cifar10", tmp_path / "out", data, ("brightness",), quiet=True)
    done = (out / "brightness.npy").stat().st_mtime_ns
    (out / "pixelate.npy").write_bytes(b"truncated")          # an unfinished file is rebuilt
    build_c.build_cifar("cifar10", out, data, ("brightness", "pixelate"), quiet=True)
    assert (out / "brightness.npy").stat().st_mtime_ns == done
    assert np.load(out / "pixelate.npy").shape == (60, 32, 32, 3)
    with pytest.raises(UserError, match="seed"):
        build_c.build_cifar("cifar10", out, data, ("brightness",), seed=1, quiet=True)


def test_refuses_to_mix_engine_versions(root, tmp_path, monkeypatch):
    """Files of another engine version (other bytes for the same seed) are never resumed into."""
    import json

    from tta.data import corruptions

    data, _, _ = root
    out = build_c.build_cifar("cifar10", tmp_path / "out", data, ("brightness",), quiet=True)
    assert json.loads((out / "manifest.json").read_text())["engine_version"] == corruptions.ENGINE_VERSION
    monkeypatch.setattr(corruptions, "ENGINE_VERSION", corruptions.ENGINE_VERSION + 1)
    with pytest.raises(UserError, match="engine_version"):
        build_c.build_cifar("cifar10", out, data, ("brightness", "pixelate"), quiet=True)
    assert not (out / "pixelate.npy").exists()
    assert build_c.generated_c_dir("cifar10", data).name == f"engine-{corruptions.ENGINE_VERSION}-seed-0"


def test_image_folder_layout(tmp_path):
    src = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    for cls in ("n01", "n02"):
        (src / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(src / cls / "a.JPEG")
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(src / cls / "b.png")
    out = build_c.build_image_folder(src, tmp_path / "c", ("contrast",), quiet=True)
    for s in range(1, 6):
        for cls in ("n01", "n02"):
            for name in ("a.JPEG", "b.png"):
                with Image.open(out / "contrast" / str(s) / cls / name) as im:
                    assert im.size == (224, 224)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tta.data.make_c", *args], capture_output=True, text=True, env=env)


def test_cli_bad_input_is_one_line_exit_2(root, tmp_path):
    data, _, _ = root
    for args in (["--dataset", "cifar10", "--data-root", str(data), "--corruptions", "fisheye"],
                 ["--dataset", "mnist"],
                 ["--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_offline_missing_cifar_is_one_user_error(tmp_path, monkeypatch, capsys):
    def offline(url, dest, sha256, what, timeout=30.0):
        raise UserError(f"{what} is missing: not found at {dest} and the download from {url} failed (offline)")

    monkeypatch.setattr(cifar, "download", offline)
    code = make_c.main(["--dataset", "cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--corruptions", "contrast", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: CIFAR-100") and err.count("\n") == 1


def test_ensure_generated_returns_official_layout(root):
    data, _, _ = root
    out = build_c.ensure_generated("cifar10", data, corruptions=("contrast",), jobs=1, quiet=True)
    assert out == build_c.generated_c_dir("cifar10", data, 0)
    assert (out / "contrast.npy").is_file() and (out / "labels.npy").is_file()
