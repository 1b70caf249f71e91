"""The BN-statistics methods on the real pretrained ResNet-20 and real CIFAR-10 test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import resnet20

from tta.methods.norm_layers import PooledBatchNorm
from tta.registry import METHODS
from tta.runner import Run, RunConfig
from tta.streams import batches, shuffled

import tta.methods  # noqa: F401


def stream(images, labels, n=None, batch_size=200, seed=0, key="clean"):
    order = shuffled(len(labels), seed, key, n)
    return list(batches(images, labels, order, batch_size, key))


def predict(method_name, checkpoint, data, **hp):
    method = METHODS.get(method_name)(**hp)
    method.setup(resnet20(checkpoint))
    with torch.inference_mode():
        return method, [method(b.x) for b in data]


def test_source_error_on_clean_cifar10_test_set(cifar_test, resnet20_checkpoint):
    images, labels = cifar_test
    _, logits = predict("source", resnet20_checkpoint, data := stream(images, labels))
    wrong = sum(int((out.argmax(1) != b.y).sum()) for out, b in zip(logits, data))
    assert 100 * wrong / len(labels) == pytest.approx(18.8, abs=0.3)


def run_noise(method, noise_root, checkpoint, n=None, **hp):
    config = RunConfig(protocol="cifar10c", method=method, hparams=hp, checkpoint=checkpoint,
                       data_root=str(noise_root), domains=["gaussian_noise"], n_examples=n)
    (row,) = Run(config).execute(store=None)
    return row


def test_bn_adapt_beats_source_by_more_than_20_points_on_gaussian_noise(noise_root, resnet20_checkpoint):
    """On 2,000 of the 10,000 images: source 82.40%, bn_adapt 48.65% (33.75 points; on all
    10,000: 81.98% and 47.99%, 33.99 points), so 20 points leaves a margin of ~13 SE."""
    source = run_noise("source", noise_root, resnet20_checkpoint, n=2000)
    adapted = run_noise("bn_adapt", noise_root, resnet20_checkpoint, n=2000)
    assert source["n"] == adapted["n"] == 2000
    assert source["error"] - adapted["error"] > 20.0


@pytest.fixture(scope="module")
def noisy_batches(cifar_test):
    images, labels = cifar_test
    from conftest import gaussian_noise

    return stream(gaussian_noise(images[::5], 5), labels[::5])


def test_alpha_bn_limits_equal_source_and_bn_adapt_exactly(noisy_batches, resnet20_checkpoint):
    batches3 = noisy_batches[:3]  # the equalities hold batch by batch: three show it
    _, source = predict("source", resnet20_checkpoint, batches3)
    _, test_stats = predict("bn_adapt", resnet20_checkpoint, batches3)
    _, all_source = predict("alpha_bn", resnet20_checkpoint, batches3, alpha=1.0)
    _, all_test = predict("alpha_bn", resnet20_checkpoint, batches3, alpha=0.0)
    _, mixed = predict("alpha_bn", resnet20_checkpoint, batches3, alpha=0.5)
    assert all(torch.equal(a, b) for a, b in zip(all_source, source))
    assert all(torch.equal(a, b) for a, b in zip(all_test, test_stats))
    assert not torch.allclose(mixed[0], source[0]) and not torch.allclose(mixed[0], test_stats[0])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bn_adapt_normalizes_with_the_batch_mean_and_biased_variance(layout, noisy_batches, resnet20_checkpoint):
    method, _ = predict("bn_adapt", resnet20_checkpoint, noisy_batches[:1])
    layer = method.layers[0]
    x = torch.randn(8, layer.num_features, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 2
    x = x.contiguous(memory_format=layout)
    expected_mean = x.double().mean(dim=(0, 2, 3))
    expected_var = x.double().var(dim=(0, 2, 3), unbiased=False)
    mean, var = layer.statistics(x)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-4, atol=1e-6)


def test_adabn_statistics_equal_those_of_everything_it_saw(noisy_batches, resnet20_checkpoint):
    method = METHODS.get("adabn")()
    method.setup(resnet20(resnet20_checkpoint))
    inputs: dict[int, list[torch.Tensor]] = {}
    for i, layer in enumerate(method.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: inputs.setdefault(i, []).append(args[0].double()))
    with torch.inference_mode():
        for batch in noisy_batches[:4]:  # pooled over four batches of 200
            method(batch.x)
    assert len(inputs) == len(method.layers) == 19
    for i, layer in enumerate(method.layers):
        everything = torch.cat(inputs[i])
        assert layer.count == everything.numel() / everything.shape[1]
        torch.testing.assert_close(layer.pooled_mean, everything.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.pooled_m2 / layer.count, everything.var(dim=(0, 2, 3), unbiased=False),
                                   rtol=1e-4, atol=1e-6)
    # the pooled variance includes the between-batch term: it differs from the mean of batch variances
    per_batch_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=False) for x in inputs[0]]).mean(0)
    assert not torch.allclose(per_batch_var, method.layers[0].pooled_m2 / method.layers[0].count, rtol=1e-6)


@pytest.mark.parametrize("name", ["source", "bn_adapt", "adabn", "alpha_bn"])
def test_reset_restores_the_source_state_bit_for_bit(name, noisy_batches, resnet20_checkpoint):
    method = METHODS.get(name)()
    model = resnet20(resnet20_checkpoint)
    method.setup(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with torch.inference_mode():
        first = method(noisy_batches[0].x)
        for batch in noisy_batches[1:4]:
            method(batch.x)
        method.reset()
        again = method(noisy_batches[0].x)
    assert torch.equal(first, again)
    method.reset()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


def test_adabn_differs_from_bn_adapt_after_the_first_batch(noisy_batches, resnet20_checkpoint):
    _, pooled = predict("adabn", resnet20_checkpoint, noisy_batches[:3])
    _, per_batch = predict("bn_adapt", resnet20_checkpoint, noisy_batches[:3])
    torch.testing.assert_close(pooled[0], per_batch[0], rtol=1e-4, atol=1e-4)  # same statistics on batch 1
    assert not torch.allclose(pooled[2], per_batch[2], atol=1e-3)
    assert np.isfinite(pooled[2].numpy()).all()
