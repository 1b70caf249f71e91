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
    # two values per channel, far apart next to sqrt(eps) (random ones closer than ~0.05 fail the bound)
    out = layer(torch.tensor([[0.0, 1.0, -2.0, 5.0], [1.0, -1.0, 2.0, 3.0]]))
    assert torch.allclose(out.abs(), torch.ones(2, 4), atol=1e-2)  # two values: normalized to +-1


def test_a_single_image_still_has_spatial_statistics():
    layer = norm_layers.TestBatchNorm(nn.BatchNorm2d(3))
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 5 + 7
    out = layer(x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_alpha_bn_keeps_the_source_variance_at_batch_one():
    bn = nn.BatchNorm1d(4)
    bn.running_var.fill_(4.0)
    layer = norm_layers.MixedBatchNorm(bn, alpha=0.5)
    out = layer(torch.ones(1, 4))
    torch.testing.assert_close(out, torch.full((1, 4), 0.5 / (2.0 + 1e-5) ** 0.5))


@pytest.mark.parametrize("shape", [(200, 16, 32, 32), (16, 16, 32, 32), (16, 64, 8, 8), (3, 5, 7, 7), (8, 6)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_statistics_equal_the_float64_reference(shape, channels_last):
    """Every kernel path (pooled pixel groups, fused channels-last, row sums) gives the biased
    per-channel statistics; the shapes cover each path on CPU."""
    generator = torch.Generator().manual_seed(len(shape) * 100 + shape[1])
    x = torch.randn(shape, generator=generator) * 3 + 2
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    axes = (0, 2, 3) if x.dim() == 4 else (0,)
    want_var, want_mean = torch.var_mean(x.double(), dim=axes, correction=0)
    var, mean = norm_layers.batch_statistics(x)
    torch.testing.assert_close(mean.double(), want_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(200, 16, 32, 32), (16, 32, 16, 16)])
def test_test_batch_norm_normalizes_with_the_batch_statistics(shape):
    bn = nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    layer = norm_layers.TestBatchNorm(bn)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0, keepdim=True)
    want = (x.double() - mean) / (var + bn.eps).sqrt() * bn.weight.double().view(1, -1, 1, 1) \
        + bn.bias.double().view(1, -1, 1, 1)
    with torch.inference_mode():
        out = layer(x)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-4)


def test_pooled_statistics_compile_once_and_match_eager():
    """AdaBN's running count is a tensor: ``torch.compile`` traces the layer once (a Python
    number would be guarded and recompiled at every batch) and pools the same statistics."""
    import torch._dynamo

    def model():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        net(torch.zeros(1, 3, 6, 6))
        return net.eval()

    eager, compiled = model(), model()
    eager_layers = norm_layers.replace_batchnorms(eager, norm_layers.PooledBatchNorm)
    compiled_layers = norm_layers.replace_batchnorms(compiled, norm_layers.PooledBatchNorm)
    traced = torch.compile(compiled, backend="eager")
    batches = [torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(4)]
    torch._dynamo.reset()
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        for x in batches:
            torch.testing.assert_close(traced(x), eager(x), rtol=1e-6, atol=1e-6)
    assert compiled_layers[0].count.item() == eager_layers[0].count.item() == 4 * 5 * 4 * 4
    torch.testing.assert_close(compiled_layers[0].pooled_m2, eager_layers[0].pooled_m2, rtol=1e-12, atol=0)
