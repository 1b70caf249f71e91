"""The feature extractor / classifier split (tta.models.split): exact for every built-in classification
model, declared once per architecture, one-line refusal for any other model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tta.errors import UserError
from tta.models import create_model
from tta.models.registry import Normalized
from tta.models.split import split_classifier

#: every built-in classification model: name -> (input side, feature width, head attribute)
BUILTIN_CLASSIFIERS = {
    "resnet20": (32, 64, "linear"), "resnet32": (32, 64, "linear"), "resnet44": (32, 64, "linear"),
    "resnet56": (32, 64, "linear"), "resnet26_gn": (32, 64, "fc"), "wrn28_10": (32, 640, "fc"),
    "smoke_cnn": (32, 64, "fc"), "vit_base_patch16_224": (224, 768, "head"),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_CLASSIFIERS))
def test_logits_are_exactly_classifier_of_features(name):
    side, width, head = BUILTIN_CLASSIFIERS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    features, classifier = split_classifier(model)
    assert classifier is getattr(model.net, head) and isinstance(classifier, nn.Linear)
    x = torch.rand(3, 3, side, side)
    with torch.no_grad():
        z = features(x)
        logits = model(x)
    assert z.shape == (3, width)
    assert torch.equal(classifier(z), logits)
    assert not getattr(model.net, head)._forward_pre_hooks  # the capture hook is removed after the call


def test_features_carry_gradients_to_the_network():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).eval()
    features, classifier = split_classifier(model)
    classifier(features(torch.rand(2, 3, 32, 32))).sum().backward()
    assert model.net.conv1.weight.grad is not None and model.net.conv1.weight.grad.abs().sum() > 0


def test_input_normalization_stays_inside_features():
    model = create_model("smoke_cnn", num_classes=10).eval()
    features, _ = split_classifier(model)
    x = torch.rand(2, 3, 32, 32)
    seen = []
    handle = model.net.features.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        features(x)
    handle.remove()
    assert torch.equal(seen[0], (x - model.mean) / model.std)  # smoke_cnn: mean 0, std 0.25


def _refusal(model) -> str:
    with pytest.raises(UserError) as info:
        split_classifier(model, "method 'lame'")
    return str(info.value)


def test_models_without_a_declared_head_are_refused_in_one_line():
    plain = _refusal(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    timm_by_name = _refusal(create_model("resnet10t", num_classes=10))  # a timm model created by name
    segmenter = _refusal(create_model("street_seg", num_classes=5, task="segmentation"))
    for message, name in ((plain, "Sequential"), (timm_by_name, "ResNet"), (segmenter, "StreetSeg")):
        assert "\n" not in message
        assert message.startswith("method 'lame' needs a feature extractor / classifier split")
        assert f"model {name} declares no classifier head" in message


def test_a_declared_head_that_is_not_linear_is_refused():
    model = create_model("resnet20", num_classes=10)
    model.net.linear = nn.Sequential(nn.Linear(64, 10))
    assert isinstance(model, Normalized) and model.classifier_head == "linear"
    assert _refusal(model) == ("method 'lame': model CifarResNet declares head 'linear', but its attribute 'linear' "
                               "is Sequential, not an nn.Linear")


def test_copies_of_a_model_keep_the_split():
    import copy

    model = create_model("resnet20", num_classes=10).eval()
    twin = copy.deepcopy(model)
    features, classifier = split_classifier(twin)
    assert classifier is twin.net.linear and features.model is twin
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(classifier(features(x)), model(x))
