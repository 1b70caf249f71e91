"""Edge cases of the BN-statistics layers."""

import pytest
import torch
from torch import nn

from tta.errors import UserError
from tta.methods import norm_layers


def test_one_value_per_channel_refuses_test_statistics():
    layer = norm_layers.TestBatchNorm(nn.BatchNorm1d(4))
    with pytest.raises(UserError, match="one value per channel"):
        layer(torch.randn(1, 4))
    out = layer(torch.randn(2, 4))
    assert torch.allclose(out.abs(), torch.ones(2, 4), atol=1e-2)  # two values: normalized to +-1


def test_a_single_image_still_has_spatial_statistics():
    layer = norm_layers.TestBatchNorm(nn.BatchNorm2d(3))
    x = torch.randn(1, 3, 6, 6) * 5 + 7
    out = layer(x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_alpha_bn_keeps_the_source_variance_at_batch_one():
    bn = nn.BatchNorm1d(4)
    bn.running_var.fill_(4.0)
    layer = norm_layers.MixedBatchNorm(bn, alpha=0.5)
    out = layer(torch.ones(1, 4))
    torch.testing.assert_close(out, torch.full((1, 4), 0.5 / (2.0 + 1e-5) ** 0.5))
