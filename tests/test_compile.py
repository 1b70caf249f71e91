"""torch.compile by default when it pays: the decision (size, method, compiler), the runner's use
of it (``extra.compiled``), and, with a real compile, results equal to eager within float
tolerance per method family, with no recompilation across batches, domains and resets."""

from __future__ import annotations

import pytest
import torch

import tta.runner as runner
from tta.methods.base import Method
from tta.methods.deyo import DeYO
from tta.methods.tent import Tent
from tta.registry import METHODS
from tta.runner import Run, RunConfig, compile_pays, compiler_available

CPU = torch.device("cpu")


def test_compile_pays_from_the_threshold_for_compilable_methods_where_a_compiler_exists():
    limit = runner.COMPILE_MIN_IMAGES
    assert limit == 100_000
    assert not compile_pays(None, Tent(), CPU)                  # unknown size: eager
    assert not compile_pays(limit - 1, Tent(), CPU)
    assert compile_pays(limit, Tent(), CPU) == compiler_available(CPU)
    assert not compile_pays(10 * limit, DeYO(), CPU)            # a new batch size at every step
    assert not compile_pays(10 * limit, Method(), CPU)          # plugins: eager unless asked
    compilable = sorted(name for name, cls in METHODS.items() if cls.compilable)
    assert {"source", "bn_adapt", "adabn", "alpha_bn", "bn_ema", "tent", "eta", "eata", "sar"} <= set(compilable)


@pytest.mark.parametrize("n_examples, choice, expected", [
    (400, None, True),     # 2 domains x 400 = 800 images >= the (lowered) threshold
    (200, None, False),    # 400 images: not worth it
    (400, False, False),   # --no-compile
    (200, True, True),     # --compile
])
def test_the_runner_compiles_when_it_pays_and_says_so_in_every_row(monkeypatch, n_examples, choice, expected):
    compiled = []
    monkeypatch.setattr(runner, "COMPILE_MIN_IMAGES", 800)
    monkeypatch.setattr(runner, "compiler_available", lambda device: True)
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    run = Run(RunConfig(protocol="smoke", method="bn_adapt", domains=["fog", "contrast"], n_examples=n_examples,
                        compile=choice))
    rows = run.execute(None)
    assert [r["extra"]["compiled"] for r in rows] == [expected, expected]
    assert len(compiled) == (1 if expected else 0)                # once per run, reused across domains


@pytest.mark.skipif(not compiler_available(CPU), reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.parametrize("method", ["bn_adapt", "tent", "eta"])
def test_compiled_runs_equal_eager_within_float_tolerance_without_recompiling(method):
    """One method per family (test-batch statistics; affine training; affine training with sample
    selection). Two domains, a reset between them, 2 batches each, one shape: one compilation."""
    import torch._dynamo

    torch._dynamo.reset()
    rows = {}
    for choice in (False, True):
        run = Run(RunConfig(protocol="smoke", method=method, domains=["fog", "contrast"], n_examples=400,
                            compile=choice))
        with torch._dynamo.config.patch(error_on_recompile=True):
            rows[choice] = run.execute(None)
    for eager, compiled in zip(rows[False], rows[True], strict=True):
        assert compiled["extra"]["compiled"] and not eager["extra"]["compiled"]
        assert compiled["nll"] == pytest.approx(eager["nll"], rel=1e-4)
        assert compiled["error"] == pytest.approx(eager["error"], abs=0.5)   # at most 2 of 400 flips at a tie
