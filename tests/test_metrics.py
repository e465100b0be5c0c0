"""metrics.py: the confusion matrix and the IoUs read off it, against hand-built matrices and a plain reference."""
import math

import pytest
import torch

from segbench.labels import IGNORE_INDEX, NUM_CLASSES
from segbench.metrics import ConfusionMatrix


def _cm_from(pairs, num_classes=3):
    cm = ConfusionMatrix(num_classes=num_classes)
    gt = torch.tensor([g for g, _ in pairs])
    pr = torch.tensor([p for _, p in pairs])
    cm.update(gt, pr)
    return cm


def test_iou_on_a_hand_built_matrix():
    # class 0: TP 2, FN 1 (predicted 1), class 1: TP 1, FP 1; class 2 absent everywhere
    cm = _cm_from([(0, 0), (0, 0), (0, 1), (1, 1)])
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(2 / 3)
    assert iou[1].item() == pytest.approx(1 / 2)
    assert math.isnan(iou[2].item())  # absent from ground truth and prediction: excluded from the mean
    assert cm.summary()["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2 * 100)
    assert cm.summary()["num_classes_scored"] == 2


def test_class_only_predicted_counts_with_zero_iou():
    cm = _cm_from([(0, 0), (0, 2)])
    iou = cm.iou()
    assert iou[2].item() == 0.0 and iou[0].item() == pytest.approx(0.5)
    assert cm.summary()["miou"] == pytest.approx(25.0)


def test_ignored_pixels_count_nowhere():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 255, 255]), torch.tensor([0, 1, 2]))
    assert cm.mat.sum().item() == 1 and cm.iou()[0].item() == 1.0
    assert math.isnan(cm.iou()[1].item())


def test_confusion_matrix_matches_a_straightforward_reference():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, NUM_CLASSES, (4, 32, 32), generator=g)
    gt[gt == 3] = IGNORE_INDEX
    pred = torch.randint(0, NUM_CLASSES, (4, 32, 32), generator=g)
    cm = ConfusionMatrix()
    for i in range(4):
        cm.update(gt[i], pred[i])
    for c in range(NUM_CLASSES):
        valid = gt != IGNORE_INDEX
        tp = ((gt == c) & (pred == c) & valid).sum().item()
        fp = ((gt != c) & (pred == c) & valid).sum().item()
        fn = ((gt == c) & (pred != c)).sum().item()
        ref = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        got = cm.iou()[c].item()
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref)


def test_eval_classes_restrict_the_mean():
    cm = _cm_from([(0, 0), (1, 2), (2, 2)], num_classes=3)
    assert cm.summary([0, 2])["miou"] == pytest.approx((1.0 + 0.5) / 2 * 100)
    assert list(cm.summary([0, 2])["per_class_iou"]) == ["0", "2"]


def test_void_predictions_are_false_negatives_only():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 255, 1]))
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(0.5) and iou[1].item() == 1.0
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="upsample logits"):
        ConfusionMatrix().update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
