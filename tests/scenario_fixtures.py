"""An in-memory dataset reader and a random-weight ResNet-20 checkpoint, for runner-level tests
that need no files from ../shared (registered once under test-only names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tta.models import create_model
from tta.protocols.base import DatasetReader, DomainData
from tta.registry import DATASETS
from tta.types import Domain

BLOB_DOMAINS = ("blur_a", "noise_b", "tint_c")
BLOB_N = 240


class BlobReader(DatasetReader):
    """Three domains of 240 16x16 images, 10 balanced classes sorted by class (as the real file),
    each domain shifted differently; content depends only on (domain, severity)."""

    domains = BLOB_DOMAINS
    has_severity = True

    def load(self, domain: Domain, root: Path) -> DomainData:
        rng = np.random.default_rng([BLOB_DOMAINS.index(domain.name), domain.severity])
        labels = np.repeat(np.arange(10), BLOB_N // 10).astype(np.int64)
        base = labels[:, None, None, None] * 20 + rng.integers(0, 40 * domain.severity, (BLOB_N, 16, 16, 3))
        return DomainData(np.clip(base, 0, 255).astype(np.uint8), labels, "procedural")


if "test_blobs" not in DATASETS:
    DATASETS.add("test_blobs", BlobReader)


def blob_protocol(tmp_path: Path, scenario: str = "episodic", batch_size: int = 40) -> tuple[str, str]:
    """A spec .toml for the blob reader and a random-weight resnet20 checkpoint: ``(spec, ckpt)``."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet20_random.pt"
    torch.save(create_model("resnet20", 10).net.state_dict(), checkpoint)
    spec = tmp_path / "blobs.toml"
    spec.write_text(f'description = "test blobs"\ndataset = "test_blobs"\nnum_classes = 10\nseverity = 5\n'
                    f'scenario = "{scenario}"\nbatch_size = {batch_size}\nmodel = "resnet20"\n')
    return str(spec), str(checkpoint)
