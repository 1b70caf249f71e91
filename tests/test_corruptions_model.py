"""Real-data check: a pretrained CIFAR-10 ResNet-20 errs more as severity rises, for every corruption.

Uses ../shared/data (the CIFAR-10 test images and the akamaster ResNet-20); skipped when absent.
Severities are compared on the same seeded subsample, so the noise of a step is the paired
(McNemar) standard error ``sqrt(b + c) / n`` with b, c the images only one severity gets wrong.
Run ``python tests/test_corruptions_model.py 1000`` for the full table.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tta.data.corruption_names import ALL_CORRUPTIONS, SEVERITIES
from tta.data.corruptions import corrupt

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
IMAGES, CHECKPOINT = DATA / "cifar10_test_jpeg.npz", DATA / "cifar10_resnet20_akamaster.th"
N_TEST = 200
# Published CIFAR parameters that are not ordered by strength; reported, not asserted:
# saturate: 0.3x, 0.1x, 1.5x, 2x+0.1, 2.5x+0.2 saturation (severity 3 is nearly clean);
# elastic_transform: the affine jitter shrinks (2.6, 2.2, 1.9, 1.6, 1.0 px) while the elastic
#   field grows, and severity 1 is affine only;
# glass_blur: severity 1 shuffles pixels with almost no blur (sigma 0.05), 2-3 blur more (0.25, 0.4)
#   with the same single shuffle, which hides the shuffle.
NOT_MONOTONE_BY_DESIGN = {"saturate", "elastic_transform", "glass_blur"}
# On 2,000 images (2026-11-27) three more steps fell by more than two paired standard errors;
# at N_TEST they are within noise and stay asserted:
# snow s2->s3 (41.9 -> 37.8%: bigger but fewer flakes, zoom 1 -> 1.75, threshold 0.5 -> 0.55);
# spatter s3->s4 (36.6 -> 31.0%: water drops give way to mud, another texture);
# jpeg_compression s4->s5 (34.6 -> 31.9%: these test images are a JPEG export, and
#   re-encoding at quality 40 changes them little more than at 50: mean |change| 6.3 vs 6.1 levels).


def _model():
    import torch
    from tta.models import create_model
    model = create_model("resnet20", 10)
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    model.net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def wrong(model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    import torch
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()
    return pred != labels


def severity_table(n: int, seed: int = 0):
    data = np.load(IMAGES)
    pick = np.random.default_rng(seed).permutation(len(data["labels"]))[:n]
    images, labels = data["images"][pick], data["labels"][pick].astype(np.int64)
    model = _model()
    clean = wrong(model, images, labels).mean()
    table = {name: [wrong(model, corrupt(images, name, s, seed=seed), labels) for s in SEVERITIES]
             for name in ALL_CORRUPTIONS}
    return clean, table


def step_violations(errs: list[np.ndarray], floor: float = 0.015) -> list[str]:
    bad = []
    for s in range(len(errs) - 1):
        a, b = errs[s], errs[s + 1]
        drop = a.mean() - b.mean()
        se = math.sqrt((a & ~b).sum() + (b & ~a).sum()) / len(a)
        if drop > max(floor, 2 * se):
            bad.append(f"s{s + 1}->s{s + 2}: {100 * a.mean():.1f}% -> {100 * b.mean():.1f}% (2 SE {200 * se:.1f})")
    return bad


@pytest.mark.skipif(not (IMAGES.is_file() and CHECKPOINT.is_file()), reason="../shared/data not present")
def test_error_rises_with_severity_on_real_model():
    clean, table = severity_table(N_TEST)
    assert clean < 0.35
    failures = {}
    for name, errs in table.items():
        if name in NOT_MONOTONE_BY_DESIGN:
            continue
        bad = step_violations(errs)
        if errs[-1].mean() <= errs[0].mean():
            bad.append("severity 5 not worse than severity 1")
        if bad:
            failures[name] = bad
    assert not failures, failures


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    clean, table = severity_table(n)
    print(f"ResNet-20 (akamaster), {n} CIFAR-10 test images (JPEG export), clean error {100 * clean:.1f}%\n")
    print("| corruption | s1 | s2 | s3 | s4 | s5 | monotone (paired 2 SE, >=1.5 pt) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, errs in table.items():
        v = step_violations(errs)
        cells = " | ".join(f"{100 * e.mean():.1f}" for e in errs)
        print(f"| {name} | {cells} | {'yes' if not v else 'no: ' + '; '.join(v)} |")
