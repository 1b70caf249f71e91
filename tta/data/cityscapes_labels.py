"""The Cityscapes label definition: label IDs -> the 19 evaluation train IDs, everything else 255.

One constant table, as in cityscapesScripts' ``helpers/labels.py`` (Cordts et al., CVPR
2016): ``(name, id, train_id)`` for the 34 label IDs 0..33; ``train_id = 255`` marks a
label that is ignored in evaluation. (``license plate``, id -1, never appears in the
``*_labelIds.png`` files and is not listed.) GTA5 (Richter et al., ECCV 2016) and ACDC
(Sakaridis et al., ICCV 2021) ship their labels in the same Cityscapes label IDs.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

#: (name, label id, train id) for every Cityscapes label id
LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, IGNORE),
    ("ego vehicle", 1, IGNORE),
    ("rectification border", 2, IGNORE),
    ("out of roi", 3, IGNORE),
    ("static", 4, IGNORE),
    ("dynamic", 5, IGNORE),
    ("ground", 6, IGNORE),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, IGNORE),
    ("rail track", 10, IGNORE),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, IGNORE),
    ("bridge", 15, IGNORE),
    ("tunnel", 16, IGNORE),
    ("pole", 17, 5),
    ("polegroup", 18, IGNORE),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, IGNORE),
    ("trailer", 30, IGNORE),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)

#: the 19 evaluation classes, in train-ID order
TRAIN_CLASSES: tuple[str, ...] = tuple(name for name, _, train_id in sorted(
    (entry for entry in LABELS if entry[2] != IGNORE), key=lambda entry: entry[2]))

_LOOKUP = np.full(256, IGNORE, dtype=np.uint8)
for _name, _label_id, _train_id in LABELS:
    _LOOKUP[_label_id] = _train_id


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label IDs (uint8) to train IDs 0..18, everything else 255."""
    return _LOOKUP[np.asarray(label_ids, dtype=np.uint8)]
