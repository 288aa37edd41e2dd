"""Metrics against a confusion matrix built by hand."""
import json
import math

import pytest
import torch

from utils.metrics import ConfusionMatrix, format_metrics_table, metrics_from_confusion

# ground truth / prediction, 255 = ignore; nc = 4 and class 3 never appears anywhere
TARGET = torch.tensor([[0, 0, 1, 1], [2, 255, 0, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2]])
# rows = truth, cols = prediction
HAND = torch.tensor([[2, 1, 0, 0],
                     [0, 2, 1, 0],
                     [1, 0, 0, 0],
                     [0, 0, 0, 0]])


def test_confusion_matrix_matches_hand_count():
    cm = ConfusionMatrix(4, 255)
    cm.update(PRED, TARGET)
    assert torch.equal(cm.mat, HAND)
    cm.update(PRED[:1], TARGET[:1])  # accumulates over updates
    assert int(cm.mat.sum()) == 7 + 4


def test_metrics_values():
    m = metrics_from_confusion(HAND, ["a", "b", "c", "d"])
    iou = [2 / (3 + 3 - 2), 2 / (3 + 3 - 2), 0 / (1 + 1 - 0)]
    acc = [2 / 3, 2 / 3, 0.0]
    dice = [2 * 2 / (3 + 3), 2 * 2 / (3 + 3), 0.0]
    assert m["mIoU"] == pytest.approx(sum(iou) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 7)
    assert m["mean_acc"] == pytest.approx(sum(acc) / 3)
    assert m["mDice"] == pytest.approx(sum(dice) / 3)
    assert m["per_class"]["a"]["iou"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["pixels"] == 1
    d = m["per_class"]["d"]  # zero union: NaN and left out of the means
    assert math.isnan(d["iou"]) and math.isnan(d["acc"]) and math.isnan(d["dice"]) and d["pixels"] == 0


def test_predicted_but_absent_class_counts_as_zero_iou():
    mat = torch.tensor([[3, 1], [0, 0]])  # class 1 predicted once, never in ground truth
    m = metrics_from_confusion(mat)
    assert m["per_class"]["1"]["iou"] == 0.0
    assert math.isnan(m["per_class"]["1"]["acc"])
    assert m["mIoU"] == pytest.approx((3 / 4 + 0) / 2)


def test_out_of_range_targets_are_skipped_and_shapes_checked():
    cm = ConfusionMatrix(2, 255)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 7, 255]))
    assert cm.mat.tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(4))


def test_table_lists_every_class_and_summary():
    table = format_metrics_table(metrics_from_confusion(HAND, ["a", "b", "c", "d"]))
    lines = table.splitlines()
    assert lines[0].split() == ["class", "pixels", "IoU", "Acc", "Dice"]
    assert lines[1].split()[:3] == ["a", "3", "0.5000"]
    assert lines[4].split()[2] == "nan"
    assert lines[-1].startswith("mIoU 0.3333")


def test_large_random_agrees_with_loop_count():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 6, (3, 50, 70), generator=g)
    t[t == 5] = 255
    p = torch.randint(0, 5, (3, 50, 70), generator=g)
    cm = ConfusionMatrix(5, 255)
    cm.update(p, t)
    ref = torch.zeros(5, 5, dtype=torch.int64)
    for ti, pi in zip(t.flatten().tolist(), p.flatten().tolist()):
        if ti != 255:
            ref[ti, pi] += 1
    assert torch.equal(cm.mat, ref)
    json.dumps(cm.compute())  # plain values only
