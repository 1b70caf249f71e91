"""``adabn``: AdaBN, target-domain statistics accumulated online.

Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation" (ICLR-W 2017;
arXiv:1603.04779) replace the source statistics of every BatchNorm layer by the statistics
of the whole target domain. Online, the whole domain is what has been seen so far: batch
``t`` is normalized with the exact pooled mean and variance of batches ``1..t``

    mu_t = sum_i n_i m_i / N_t,   var_t = (sum_i [n_i v_i + n_i (m_i - mu_t)^2]) / N_t

(between-batch term included), computed incrementally by
:class:`tta.methods.norm_layers.PooledBatchNorm`. ``reset`` forgets them (episodic:
at every new domain).
"""

from tta.methods.norm_layers import PooledBatchNorm
from tta.methods.norm_stats import NormStatsMethod
from tta.registry import register_method


@register_method("adabn")
class AdaBN(NormStatsMethod):
    """AdaBN (Li et al. 2017): exact pooled statistics of the target domain seen so far."""

    def make_layer(self, bn):
        return PooledBatchNorm(bn)

    def reset_state(self):
        for layer in self.layers:
            layer.reset_statistics()
