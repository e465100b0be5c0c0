"""labels.py: the Cityscapes label space (ids -> trainIds, the palette) that every adapter decodes into."""
import numpy as np
import pytest

from segbench.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize, ids_to_train_ids


def test_cityscapes_id_mapping_matches_the_official_table():
    assert len(CITYSCAPES_ID_TO_TRAINID) == NUM_CLASSES
    assert sorted(CITYSCAPES_ID_TO_TRAINID.values()) == list(range(NUM_CLASSES))
    ids = np.array([[7, 8, 11, 26, 33], [0, 6, 9, 18, 30]], np.uint8)
    expected = np.array([[0, 1, 2, 13, 18], [255] * 5], np.uint8)
    np.testing.assert_array_equal(ids_to_train_ids(ids), expected)


def test_every_unlisted_id_is_ignored():
    ids = np.arange(256, dtype=np.uint8)
    out = ids_to_train_ids(ids)
    for i in range(256):
        assert out[i] == CITYSCAPES_ID_TO_TRAINID.get(i, IGNORE_INDEX)


def test_out_of_range_ids_fail_loudly():
    with pytest.raises(ValueError, match="0..255"):
        ids_to_train_ids(np.array([300], np.int32))


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    rgb = colorize(np.array([[0, 13, 255]], np.uint8))
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == tuple(PALETTE[13]) and tuple(rgb[0, 2]) == (0, 0, 0)
