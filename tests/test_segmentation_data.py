"""Segmentation readers on fixture files in the exact public layouts, and the label mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tta.data.cityscapes_labels import TRAIN_CLASSES, to_train_ids
from tta.errors import UserError
from tta.protocols.segmentation import ACDC, GTA5Cityscapes
from tta.types import Domain

# the 19 evaluation classes of the Cityscapes benchmark: label id -> train id (cityscapesScripts labels.py)
EXPECTED_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SIZE = (6, 10)  # fixture label size (height, width)


def test_label_mapping_matches_the_cityscapes_table():
    ids = np.arange(256, dtype=np.uint8)
    mapped = to_train_ids(ids)
    for label_id in range(256):
        assert mapped[label_id] == EXPECTED_TRAIN_IDS.get(label_id, 255), label_id
    assert TRAIN_CLASSES[0] == "road" and TRAIN_CLASSES[10] == "sky" and TRAIN_CLASSES[18] == "bicycle"
    assert len(TRAIN_CLASSES) == 19


def _label_map(label_id: int) -> np.ndarray:
    """A label-ID map: left half ``label_id``, right half ``0`` (unlabeled -> ignored)."""
    out = np.zeros(SIZE, np.uint8)
    out[:, : SIZE[1] // 2] = label_id
    return out


def _save_rgb(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*SIZE, 3), value, np.uint8)).save(path)


def _save_label(path: Path, label_id: int, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_label_map(label_id))
    if palette:  # GTA5 ships palette PNGs whose indices are the label ids
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)


@pytest.fixture
def data_root(tmp_path) -> Path:
    """Cityscapes val (2 cities), GTA5 (3 images), ACDC val fog + night with references, as on disk."""
    label_ids = list(EXPECTED_TRAIN_IDS)
    for k, (city, frame) in enumerate([("frankfurt", "000000_000294"), ("frankfurt", "000000_000576"),
                                       ("lindau", "000000_000019")]):
        stem = f"{city}_{frame}"
        _save_rgb(tmp_path / f"cityscapes/leftImg8bit/val/{city}/{stem}_leftImg8bit.png", 10 + k)
        _save_label(tmp_path / f"cityscapes/gtFine/val/{city}/{stem}_gtFine_labelIds.png", label_ids[k])
        # files of other kinds in the same folders must not be picked up
        _save_label(tmp_path / f"cityscapes/gtFine/val/{city}/{stem}_gtFine_instanceIds.png", 1)
    for k in range(3):
        _save_rgb(tmp_path / f"gta5/images/{k + 1:05d}.png", 20 + k)
        _save_label(tmp_path / f"gta5/labels/{k + 1:05d}.png", label_ids[5 + k], palette=True)
    for c, condition in enumerate(("fog", "night")):
        for s, sequence in enumerate(("GOPR0475", "GP010476")):
            for f in range(2):
                stem = f"{sequence}_frame_{f * 100 + 41:06d}"
                value = 100 + 10 * c + 4 * s + f
                _save_rgb(tmp_path / f"acdc/rgb_anon/{condition}/val/{sequence}/{stem}_rgb_anon.png", value)
                _save_rgb(tmp_path / f"acdc/rgb_anon/{condition}/val_ref/{sequence}/{stem}_rgb_ref_anon.png", value + 50)
                _save_label(tmp_path / f"acdc/gt/{condition}/val/{sequence}/{stem}_gt_labelIds.png",
                            label_ids[10 + 2 * s + f])
    return tmp_path


def test_cityscapes_reader_finds_every_pair_and_maps_labels(data_root):
    reader = GTA5Cityscapes(input_size=(3, 5))
    reader.check([Domain("cityscapes")], data_root)
    data = reader.load(Domain("cityscapes"), data_root)
    assert len(data.images) == len(data.labels) == 3
    images = data.images[np.array([2, 0])]
    assert images.shape == (2, 3, 5, 3) and images.dtype == np.uint8
    assert images[0].min() == images[0].max() == 12 and images[1].max() == 10  # sorted: frankfurt x2, lindau
    labels = data.labels[np.arange(3)]
    assert labels.shape == (3, *SIZE)  # native label size
    for k in range(3):
        assert (labels[k][:, :5] == k).all() and (labels[k][:, 5:] == 255).all()  # road, sidewalk, building
    assert data.extras == {}


def test_gta5_reader_reads_palette_labels(data_root):
    data = GTA5Cityscapes(input_size=(4, 4)).load(Domain("gta5"), data_root)
    assert len(data.images) == 3
    labels = data.labels[np.arange(3)]
    assert [int(labels[k][0, 0]) for k in range(3)] == [5, 6, 7]  # pole, traffic light, traffic sign
    assert (labels[:, :, 5:] == 255).all()


def test_acdc_reader_pairs_images_labels_and_references(data_root):
    reader = ACDC(input_size=(3, 5))
    domains = [Domain("fog"), Domain("night")]
    reader.check(domains, data_root)
    data = reader.load(Domain("night"), data_root)
    assert len(data.images) == len(data.labels) == len(data.extras["reference"]) == 4
    images, references = data.images[np.arange(4)], data.extras["reference"][np.arange(4)]
    assert (references.astype(int) - images.astype(int) == 50).all()  # every reference belongs to its image
    expected_values = sorted(110 + 4 * s + f for s in range(2) for f in range(2))
    assert sorted(int(v) for v in images[:, 0, 0, 0]) == expected_values
    labels = data.labels[np.arange(4)]
    by_value = {int(images[k, 0, 0, 0]): int(labels[k][0, 0]) for k in range(4)}
    for s in range(2):
        for f in range(2):
            assert by_value[110 + 4 * s + f] == EXPECTED_TRAIN_IDS[list(EXPECTED_TRAIN_IDS)[10 + 2 * s + f]]


def test_missing_files_are_one_line_errors(data_root):
    (data_root / "acdc/rgb_anon/fog/val_ref/GOPR0475/GOPR0475_frame_000041_rgb_ref_anon.png").unlink()
    with pytest.raises(UserError, match="reference images missing.*GOPR0475_frame_000041_rgb_ref_anon.png"):
        ACDC().check([Domain("fog")], data_root)
    (data_root / "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match="gtFine label files missing.*lindau_000000_000019_gtFine_labelIds"):
        GTA5Cityscapes().check([Domain("cityscapes")], data_root)
    with pytest.raises(UserError, match="GTA5 images not found"):
        GTA5Cityscapes().check([Domain("gta5")], data_root / "nowhere")


def write_acdc(root: Path, conditions=("fog",), kinds=("labelIds",), partial: str | None = None) -> None:
    """ACDC val of ``conditions`` (2 sequences x 2 frames, with references) and label files of ``kinds``.

    Image (sequence ``s``, frame ``f``) is labelled train class ``10 + 2s + f`` in its ``labelIds`` file
    and train class ``2s + f`` in its ``labelTrainIds`` file, so a test sees which file was read.
    ``partial``: that label kind is written for the first frame only.
    """
    label_ids = list(EXPECTED_TRAIN_IDS)
    for c, condition in enumerate(conditions):
        for s, sequence in enumerate(("GOPR0475", "GP010476")):
            for f in range(2):
                stem = f"{sequence}_frame_{f * 100 + 41:06d}"
                value = 100 + 10 * c + 4 * s + f
                _save_rgb(root / f"acdc/rgb_anon/{condition}/val/{sequence}/{stem}_rgb_anon.png", value)
                _save_rgb(root / f"acdc/rgb_anon/{condition}/val_ref/{sequence}/{stem}_rgb_ref_anon.png", value + 50)
                gt = root / f"acdc/gt/{condition}/val/{sequence}"
                if "labelIds" in kinds and (partial != "labelIds" or (s, f) == (0, 0)):
                    _save_label(gt / f"{stem}_gt_labelIds.png", label_ids[10 + 2 * s + f])
                if "labelTrainIds" in kinds and (partial != "labelTrainIds" or (s, f) == (0, 0)):
                    train = np.full(SIZE, 255, np.uint8)  # right half ignored, as in the labelIds maps
                    train[:, : SIZE[1] // 2] = 2 * s + f
                    gt.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(train).save(gt / f"{stem}_gt_labelTrainIds.png")


def _first_label_by_image(reader: ACDC, root: Path, condition: str) -> dict[int, int]:
    data = reader.load(Domain(condition), root)
    images, labels = data.images[np.arange(4)], data.labels[np.arange(4)]
    assert (labels[:, :, SIZE[1] // 2:] == 255).all()
    return {int(images[k, 0, 0, 0]) - 100: int(labels[k][0, 0]) for k in range(4)}  # 4s + f -> train id


def test_acdc_reads_label_train_ids_alone(tmp_path):
    write_acdc(tmp_path, ("fog",), kinds=("labelTrainIds",))
    reader = ACDC(input_size=(3, 5))
    reader.check([Domain("fog")], tmp_path)
    assert _first_label_by_image(reader, tmp_path, "fog") == {4 * s + f: 2 * s + f for s in range(2) for f in range(2)}
    assert reader.row_extra("fog") == {"input_size": "3x5", "split": "val", "label_format": "labelTrainIds"}
    assert all(p.name.endswith("_gt_labelTrainIds.png") for p in reader.data_files([Domain("fog")], tmp_path)
               if "/gt/" in p.as_posix())


def test_acdc_prefers_label_train_ids_when_both_exist(tmp_path):
    write_acdc(tmp_path, ("fog", "night"), kinds=("labelIds", "labelTrainIds"))
    reader = ACDC(input_size=(3, 5))
    by_image = _first_label_by_image(reader, tmp_path, "night")
    assert by_image == {4 * s + f + 10: 2 * s + f for s in range(2) for f in range(2)}  # night: values + 10
    assert reader.row_extra("night")["label_format"] == "labelTrainIds"


def test_acdc_label_ids_alone_and_incomplete_train_ids(tmp_path):
    expected = {4 * s + f: EXPECTED_TRAIN_IDS[list(EXPECTED_TRAIN_IDS)[10 + 2 * s + f]] for s in range(2) for f in range(2)}
    write_acdc(tmp_path, ("fog",), kinds=("labelIds", "labelTrainIds"), partial="labelTrainIds")
    reader = ACDC(input_size=(3, 5))
    assert _first_label_by_image(reader, tmp_path, "fog") == expected  # trainIds for some images only: labelIds for all
    assert reader.row_extra("fog")["label_format"] == "labelIds"
    write_acdc(tmp_path / "neither", ("fog",), kinds=("labelIds", "labelTrainIds"), partial="labelIds")
    for stale in (tmp_path / "neither/acdc/gt/fog/val").glob("*/*_gt_labelTrainIds.png"):
        stale.unlink()
    with pytest.raises(UserError, match=r"ACDC fog label files missing.*_gt_labelIds\.png.*labelTrainIds"):
        ACDC().check([Domain("fog")], tmp_path / "neither")
