"""Training augmentations, by name (a recipe's ``augment`` key).

* ``none``: the images as they are.
* ``domainbed``: DomainBed's training transform, per example on [0, 1] tensors:
  ``RandomResizedCrop(224, scale=(0.7, 1.0))``, horizontal flip (p = 0.5),
  ``ColorJitter(0.3, 0.3, 0.3, 0.3)``, ``RandomGrayscale(p = 0.1)``. (DomainBed crops the
  decoded file; here the crop is taken from the 224 x 224 resized image.)

Randomness comes from torch's global generator, which the training loop seeds from
``(seed, step)`` before every step, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

from typing import Callable

import torch

from tta.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation")


@AUGMENTATIONS.register("none")
def no_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x


@AUGMENTATIONS.register("domainbed")
def domainbed_augmentation(size: int = 224) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
        v2.RandomGrayscale(p=0.1),
    ])
    return lambda x: torch.stack([transform(image) for image in x])
