"""The README's main command: same numbers as the committed leaderboard, and a clean checkout.

The main command (``tta.run --method alpha_bn --protocol smoke``) runs here on two of its
14 domains, with the full 2,000 examples each. Its errors must equal the committed
leaderboard's rows for the same cell (alpha_bn, seed 0, severity 5, episodic, the shipped
smoke CNN, the current corruption engine) within 0.1 point (2 of 2,000 images: another
processor's float kernels may flip a prediction at a tie; on this machine they are equal),
and the run must leave ``git status`` of the checkout as it found it (its rows go to
``$TTA_HOME``, which the test session points at a temporary folder).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import PROJECT_ROOT
from helpers import run_cli
from tta.data.corruptions import ENGINE_VERSION
from tta.models.smoke_cnn import WEIGHTS_SHA256
from tta.store import ResultStore

COMMITTED_STORE = PROJECT_ROOT / "leaderboard" / "results.sqlite"
DOMAINS = ("fog-5", "contrast-5")


def _git_status() -> str:
    return subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True, check=True).stdout


def _committed_errors() -> dict[str, float]:
    rows = [r for r in ResultStore(COMMITTED_STORE, read_only=True).rows()
            if r["protocol"] == "smoke" and r["method"] == "alpha_bn" and r["seed"] == 0
            and r["scenario"] == "episodic" and r["hparams"] == {"alpha": 0.1} and r["n"] == 2000
            and r["checkpoint_sha256"] == WEIGHTS_SHA256 and r["domain"] in DOMAINS
            and (r["extra"] or {}).get("corruption_engine") == ENGINE_VERSION]
    return {r["domain"]: r["error"] for r in rows}


def test_main_command_matches_the_committed_leaderboard_and_leaves_git_status_clean(tmp_path):
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    committed = _committed_errors()
    assert sorted(committed) == sorted(DOMAINS), (
        "the committed leaderboard has no row of the main command's cell for the shipped weights and the "
        "current corruption engine: regenerate it with benchmarks/make_leaderboard.py")
    before = _git_status()
    out = tmp_path / "rows.json"
    result = run_cli("tta.run", "--method", "alpha_bn", "--protocol", "smoke", "--domains", "fog,contrast",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert _git_status() == before
    fresh = {r["domain"]: r["error"] for r in json.loads(out.read_text())}
    for domain in DOMAINS:
        assert fresh[domain] == pytest.approx(committed[domain], abs=0.1), domain
