"""``tta.train``'s bad input: one ``error:`` line, exit 2, checked before work, nothing left behind.

And what a finished run leaves: checkpoints that name their model, training method,
pretrained weights and seed (:func:`tta.models.checkpoint.checkpoint_meta`).
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from tta.models.checkpoint import checkpoint_meta, read_state_dict
from tta.train import main

FAST = ["--protocol", "shapes_dg", "--method", "erm", "--target", "solid", "--steps", "2",
        "--checkpoint-every", "2", "--batch-size", "4"]


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI, assert one ``error:`` line and exit 2, return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def garbage_files(folder) -> dict[str, bytes]:
    """Files that are not PyTorch checkpoints, as a user might pass them by mistake."""
    folder.mkdir()
    archive = folder / "other.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "not a torch archive")
    return {
        "text.pt": b"hello world\n",
        "json.pt": json.dumps({"weights": [1, 2, 3]}).encode(),
        "truncated_pickle.pt": b"\x80\x02}q\x00(X",
        "random.pt": bytes(range(256)) * 8,
        "other.zip": archive.read_bytes(),
    }


def test_a_garbage_pretrained_file_is_one_line_and_creates_nothing(tmp_path, capsys):
    for name, data in garbage_files(tmp_path / "files").items():
        path = tmp_path / "files" / name
        path.write_bytes(data)
        out = tmp_path / f"run-{name}"
        line = refused(capsys, [*FAST, "--pretrained", str(path), "--out", str(out)])
        assert "--pretrained" in line and name in line, line
        assert not out.exists(), name


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    out = tmp_path / "run"
    refused(capsys, [*FAST, "--pretrained", str(bad), "--out", str(out)])
    refused(capsys, [*FAST, "--batch-size", "0", "--out", str(out)])
    assert not out.exists()
    assert main([*FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2 and summary["batch_size"] == 4


def test_a_folder_with_a_different_config_but_no_checkpoint_is_reused(tmp_path, capsys):
    """Left by an older version's failed start: no progress in it, so it does not block."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"method": "sam", "steps": 99}))
    (out / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    assert main([*FAST, "--out", str(out)]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # two training steps and one evaluation, none of the stale lines
    assert json.loads((out / "config.json").read_text())["method"] == "erm"


@pytest.mark.parametrize("flag", ["--batch-size", "--steps", "--checkpoint-every"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_sizes_are_refused_not_replaced_by_the_recipe(tmp_path, capsys, flag, value):
    argv = [*FAST, "--out", str(tmp_path / "run")]
    argv[argv.index(flag) + 1] = value
    line = refused(capsys, argv)
    assert flag in line and value in line, line
    assert not (tmp_path / "run").exists()


def test_out_below_a_regular_file_is_refused_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = refused(capsys, [*FAST, "--out", str(blocker / "run")])
    assert "--out" in line and "not a folder" in line
    line = refused(capsys, [*FAST, "--out", str(blocker)])
    assert "not a folder" in line


def test_out_without_write_permission_is_refused_before_work(tmp_path, capsys, monkeypatch):
    """Root ignores chmod, so the permission answer itself is simulated for the parent folder."""
    import os

    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(locked)
                        else real_access(path, mode, **kw))
    line = refused(capsys, [*FAST, "--out", str(locked / "run")])
    assert "not writable" in line
    assert not (locked / "run").exists()


def test_permission_error_when_creating_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    real_mkdir = Path.mkdir

    def deny(self, *args, **kwargs):
        if self.name == "run":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", deny)
    code = main([*FAST, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # the permission check passed (the folder became unwritable later): header, then the one error line
    assert err.splitlines()[-1].startswith("error: cannot create --out") and "Permission denied" in err


def test_checkpoints_name_their_model_method_weights_and_seed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*FAST, "--method", "sam", "--seed", "3", "--out", str(out)]) == 0
    for name in ("best.pt", "last.pt"):
        meta = checkpoint_meta(out / name)
        assert {k: meta[k] for k in ("model", "training_method", "pretrained", "seed", "protocol", "target",
                                     "recipe", "bn", "num_classes")} == {
            "model": "smoke_cnn", "training_method": "sam", "pretrained": "none", "seed": 3,
            "protocol": "shapes_dg", "target": "solid", "recipe": "shapes_dg", "bn": "train", "num_classes": 10}
        assert json.loads(meta["hparams"])["rho"] == 0.05 and meta["step"] == 2
    raw = torch.load(out / "best.pt", weights_only=True)  # plain data: a weights-only load reads it
    assert set(raw) == {"state_dict", "tta_meta"}
    state = read_state_dict(out / "best.pt")
    assert state.keys() == raw["state_dict"].keys() and "fc.weight" in state
    summary = json.loads((out / "summary.json").read_text())
    assert summary["key"] == checkpoint_meta(out / "best.pt")["key"]


def test_checkpoint_meta_of_a_plain_state_dict_is_empty_and_of_garbage_one_line(tmp_path):
    from tta.errors import UserError

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert checkpoint_meta(plain) == {}
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "tta_meta": {"model": "x", "seed": 1}}, legacy,
               _use_new_zipfile_serialization=False)
    assert checkpoint_meta(legacy) == {"model": "x", "seed": 1}
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a readable weights-only PyTorch file"):
        checkpoint_meta(text)


def test_dg_store_and_tables_default_to_the_user_folder(tmp_path, monkeypatch):
    from tta.paths import CHECKOUT_ROOT
    from tta.train import default_store, default_table_dir

    monkeypatch.setenv("TTA_HOME", str(tmp_path / "home"))
    assert default_store() == (tmp_path / "home" / "dg_results.sqlite").resolve()
    assert default_table_dir().is_relative_to((tmp_path / "home").resolve())
    assert not default_store().is_relative_to(CHECKOUT_ROOT)
