"""``bn_adapt``: normalize every batch with its own statistics.

Test-time normalization, as evaluated by Schneider et al. (NeurIPS 2020, "Improving
robustness against common corruptions by covariate shift adaptation") and Nado et al.
(2020, "Evaluating prediction-time batch normalization"): for each BatchNorm layer

    y = (x - mu_B) / sqrt(sigma_B^2 + eps) * gamma + beta

with ``mu_B``, ``sigma_B^2`` the biased mean and variance of the current test batch
(over batch and spatial axes). Source statistics are ignored; nothing is kept between
batches, so ``reset`` has nothing to restore.
"""

from tta.methods.norm_layers import TestBatchNorm
from tta.methods.norm_stats import NormStatsMethod
from tta.registry import register_method


@register_method("bn_adapt")
class BNAdapt(NormStatsMethod):
    """Test-batch BatchNorm statistics (Schneider et al. 2020; Nado et al. 2020)."""

    def make_layer(self, bn):
        return TestBatchNorm(bn)
