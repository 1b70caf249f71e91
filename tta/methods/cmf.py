"""``cmf``: continual momentum filtering, ROID's loss with a Kalman-filter blend of source and target weights.

Lee, Yoon & Hwang, "Becoming Continual Test-Time Adaptation Learners with Continual Momentum
Filtering" (ICLR 2024), as mariodoebler/test-time-adaptation (MD) 8b2ed63 implements it
(``classification/methods/cmf.py``): the loss, weights, consistency view and prior correction are
ROID's (:class:`tta.methods.roid.WeightedSLRMethod`, same defaults, MD reads the ``ROID.*`` keys,
``cmf.py`` lines 52-57); only the averaging after each optimizer step differs. A hidden copy
``h`` of the trained parameters ``theta`` (starting at the source ``theta_0``) and its scalar
variance ``v`` (starting at 0) follow, per step (``cmf.py`` lines 91-128),

    predict:   h <- alpha h + (1 - alpha) theta_0,          v <- alpha^2 v + q
    update:    beta = (1 - q) / (v + 1 - q), clipped: below 0.89 -> 0.89, at least 0.9999 -> 1
               h <- beta h + (1 - beta) theta,               v <- beta v
    ensemble:  theta <- gamma theta + (1 - gamma) h

(each blend :func:`tta.methods.weight_averaging.ema_update_`, skipped when its momentum is 1, as MD).
The process noise is scaled by the number of trained parameters, ``q = Q * n_trained / 38400``
(``cmf.py`` lines 50 and 86; 1,376 on ResNet-20, so q = 1.79e-4).

Defaults: ``classification/conf.py`` lines 275-277 (``CMF.ALPHA`` 0.99, ``CMF.GAMMA`` 0.99, ``CMF.Q``
0.005) and lines 265-270 for the ``ROID.*`` part (see :mod:`tta.methods.roid`); ``cfgs/cifar10_c/cmf.yaml``
lines 26-31 (Adam, 1 step, beta 0.9, lr 1e-3, wd 0). MD's ``CMF.TYPE`` ("lp" or "op", line 278) has no
effect in MD's code: the predict step updates the hidden model in place and returns it, so the "op"
branch's ``recovered_model`` is the updated hidden model as well; it is not a hyperparameter here.
MD updates the hidden model's frozen weights too (``update_all=True``); they never reach the
adapted model, so only the trained parameters' hidden copy is kept here.
``benchmarks/reference_md/results_cmf*.md``: tta against MD.

Reset: ``theta``, ``h``, ``v``, ``p_bar``, the optimizer and the view generator return to their setup
values. MD's ``reset`` restores the models and ``p_bar`` but keeps ``v`` (``hidden_var``) from the
episode before, so episodic runs differ from MD's by that (continual runs are unaffected).

Batch size 1: as ROID, no step (and no filtering); the prediction gets the prior correction.
"""

from __future__ import annotations

from tta.hparams import HParam
from tta.methods.roid import WeightedSLRMethod, roid_hparams
from tta.methods.weight_averaging import ema_update_
from tta.registry import register_method

#: trained-parameter count at which ``q`` equals ``CMF.Q`` (MD ``cmf.py`` line 50)
REFERENCE_PARAMETER_COUNT = 38400


@register_method("cmf")
class CMF(WeightedSLRMethod):
    """CMF (Lee et al. 2024): ROID's loss; Kalman-filtered hidden weights between source and target, ensembled in."""

    hparams = {
        **roid_hparams(),
        "alpha": HParam(0.99, "predict step: hidden <- alpha hidden + (1 - alpha) source", 0.0, 1.0,
                        search=(0.9, 0.99, 0.999)),
        "gamma": HParam(0.99, "ensemble step: theta <- gamma theta + (1 - gamma) hidden", 0.0, 1.0,
                        search=(0.9, 0.99, 0.999)),
        "q": HParam(0.005, "process noise per 38,400 trained parameters", 0.0, 1000.0, search=(0.001, 0.005, 0.02)),
    }

    def configure(self, model) -> None:
        super().configure(model)
        self.noise = self.hp["q"] * (sum(p.numel() for p in self.params) / REFERENCE_PARAMETER_COUNT)
        self.hidden = [s.clone() for s in self.source]
        self.hidden_var = 0.0
        self.beta: float | None = None

    def reset_state(self) -> None:
        super().reset_state()
        for h, s in zip(self.hidden, self.source):
            h.copy_(s)
        self.hidden_var = 0.0
        self.beta = None

    def average(self) -> None:
        alpha, q = self.hp["alpha"], self.noise
        ema_update_(self.hidden, self.source, alpha)
        self.hidden_var = alpha ** 2 * self.hidden_var + q
        r = 1 - q
        beta = r / (self.hidden_var + r)
        beta = beta if beta > 0.89 else 0.89
        beta = beta if beta < 0.9999 else 1.0
        self.beta = beta
        self.hidden_var = beta * self.hidden_var
        ema_update_(self.hidden, self.params, beta)
        ema_update_(self.params, self.hidden, self.hp["gamma"])

    def row_extra(self) -> dict:
        return {"cmf_beta": self.beta, "cmf_hidden_var": self.hidden_var}
