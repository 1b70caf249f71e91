"""``alpha_bn``: alpha-BN, source and test-batch statistics mixed.

You, Li & Zhao, "Test-time Batch Statistics Calibration for Covariate Shift"
(arXiv:2110.04065, 2021). For every BatchNorm layer

    mu    = alpha * mu_source      + (1 - alpha) * mu_test
    sigma2 = alpha * sigma2_source + (1 - alpha) * sigma2_test
    y = (x - mu) / sqrt(sigma2 + eps) * gamma + beta

**Convention in tta: ``alpha`` is the weight on the SOURCE statistics.** ``alpha = 1``
is the frozen source model, ``alpha = 0`` is ``bn_adapt``. Default ``alpha = 0.1``.

Mapping to the other conventions in use:

* ``prior`` (Schneider et al. 2020, bethgelab's ``robusta``; weight on source):
  ``alpha = prior``. Their ``N`` pseudo-samples at batch size ``n`` give
  ``alpha = N / (N + n)`` (N=16, n=200 -> 0.074).
* ``alpha`` of ``AlphaBatchNorm`` in mariodoebler/test-time-adaptation and the codebases
  derived from it (weight on the *test* statistics): ``alpha_tta = 1 - alpha_there``;
  their ``BN.ALPHA = 0.1`` is ``alpha = 0.9`` here.

The default 0.1 (source weight) is this project's choice for batch 200 on corrupted
CIFAR; the paper's own per-task defaults could not be checked from the sources
available offline and are not claimed here.
"""

from tta.hparams import HParam
from tta.methods.norm_layers import MixedBatchNorm
from tta.methods.norm_stats import NormStatsMethod
from tta.registry import register_method


@register_method("alpha_bn")
class AlphaBN(NormStatsMethod):
    """alpha-BN (You et al. 2021): alpha * source + (1 - alpha) * test-batch statistics."""

    hparams = {
        "alpha": HParam(0.1, "weight on the source statistics (1 = source, 0 = bn_adapt)", 0.0, 1.0,
                        search=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)),
    }

    def make_layer(self, bn):
        return MixedBatchNorm(bn, self.hp["alpha"])
