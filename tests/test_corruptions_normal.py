"""The Box-Muller draws behind gaussian and speckle noise: the law, independence, determinism."""

import math

import numpy as np
import pytest
from scipy import stats

from tta.data.corruptions.normal import NORMAL_BLOCK_PAIRS, standard_normal_float32


@pytest.mark.parametrize("n", [1, 7, 2 * NORMAL_BLOCK_PAIRS + 3, 300_001])
def test_shape_dtype_and_determinism(n):
    a = standard_normal_float32(np.random.default_rng(5), (n,))
    b = standard_normal_float32(np.random.default_rng(5), (n,))
    assert a.dtype == np.float32 and a.shape == (n,) and np.isfinite(a).all()
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, standard_normal_float32(np.random.default_rng(6), (n,)))


def test_draws_follow_the_standard_normal_law():
    z = standard_normal_float32(np.random.default_rng(0), (1000, 301)).astype(np.float64)
    assert z.shape == (1000, 301)
    flat = z.reshape(-1)
    # both halves of every block (cosines and sines) are N(0, 1) on their own
    block = 2 * NORMAL_BLOCK_PAIRS
    starts = np.arange(len(flat)) % block
    for half in (flat[starts < NORMAL_BLOCK_PAIRS], flat[starts >= NORMAL_BLOCK_PAIRS]):
        assert stats.kstest(half, "norm").pvalue > 1e-3
        assert abs(half.mean()) < 4 / math.sqrt(len(half))
        assert abs(half.var() - 1) < 4 * math.sqrt(2 / len(half))
    assert abs(stats.kurtosis(flat)) < 4 * math.sqrt(24 / len(flat))
    # the mass beyond 3 sigma, where a wrong radius would show first
    assert abs((np.abs(flat) > 3).mean() - 2 * stats.norm.sf(3)) < 4 * math.sqrt(0.0027 / len(flat))
    assert np.abs(flat).max() <= math.sqrt(48 * math.log(2)) + 1e-5


def test_the_two_draws_of_a_pair_are_uncorrelated():
    n = 4 * NORMAL_BLOCK_PAIRS
    z = standard_normal_float32(np.random.default_rng(1), (n,)).astype(np.float64)
    cosines = np.concatenate([z[s:s + NORMAL_BLOCK_PAIRS] for s in range(0, n, 2 * NORMAL_BLOCK_PAIRS)])
    sines = np.concatenate([z[s + NORMAL_BLOCK_PAIRS:s + 2 * NORMAL_BLOCK_PAIRS] for s in range(0, n, 2 * NORMAL_BLOCK_PAIRS)])
    assert abs(np.corrcoef(cosines, sines)[0, 1]) < 4 / math.sqrt(len(cosines))
    # squared radii of a pair are chi-square with 2 degrees of freedom (exponential, mean 2)
    assert stats.kstest(cosines ** 2 + sines ** 2, "expon", args=(0, 2)).pvalue > 1e-3
