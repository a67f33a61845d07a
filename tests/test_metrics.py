"""Metrics against scikit-learn, and the multi-view / fused scores against a naive loop."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix as sk_confusion_matrix
from sklearn.metrics import recall_score

from utils.metrics import (classification_report, confusion_matrix, head_scores, per_class_recall,
                           unweighted_average_recall, view_probabilities, weighted_average_recall)


def random_predictions(seed, num_samples, num_classes, never_predicted=None, absent_from_truth=None):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(num_classes, (num_samples,), generator=generator)
    predictions = torch.randint(num_classes, (num_samples,), generator=generator)
    if never_predicted is not None:
        predictions[predictions == never_predicted] = (never_predicted + 1) % num_classes
    if absent_from_truth is not None:
        targets[targets == absent_from_truth] = (absent_from_truth + 2) % num_classes
    return targets, predictions


@pytest.mark.parametrize('seed, never_predicted', [(0, None), (1, 3), (2, 0)])
def test_metrics_equal_scikit_learn(seed, never_predicted):
    num_classes = 7
    targets, predictions = random_predictions(seed, 211, num_classes, never_predicted)
    matrix = confusion_matrix(targets, predictions, num_classes)
    y_true, y_pred = targets.numpy(), predictions.numpy()
    labels = list(range(num_classes))
    np.testing.assert_array_equal(matrix.numpy(), sk_confusion_matrix(y_true, y_pred, labels=labels))
    np.testing.assert_allclose(per_class_recall(matrix).numpy(),
                               100 * recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))
    assert unweighted_average_recall(matrix) == pytest.approx(100 * balanced_accuracy_score(y_true, y_pred))
    assert weighted_average_recall(matrix) == pytest.approx(100 * accuracy_score(y_true, y_pred))
    if never_predicted is not None:
        assert per_class_recall(matrix)[never_predicted] == 0


@pytest.mark.filterwarnings('ignore:y_pred contains classes not in y_true')
def test_uar_ignores_a_class_absent_from_the_ground_truth():
    num_classes = 5
    targets, predictions = random_predictions(3, 97, num_classes, never_predicted=1, absent_from_truth=4)
    matrix = confusion_matrix(targets, predictions, num_classes)
    recall = per_class_recall(matrix)
    assert torch.isnan(recall[4]) and recall[1] == 0
    # scikit-learn's balanced accuracy averages over the classes present in y_true.
    y_true, y_pred = targets.numpy(), predictions.numpy()
    assert unweighted_average_recall(matrix) == pytest.approx(100 * balanced_accuracy_score(y_true, y_pred))
    report = classification_report(torch.nn.functional.one_hot(predictions, num_classes).float(), targets,
                                   num_classes)
    assert report['per_class_recall'][4] is None
    assert report['per_class_recall'][:4] == pytest.approx(recall[:4].tolist())
    assert report['confusion_matrix'] == matrix.tolist()


def test_view_probabilities_and_fused_scores_equal_a_naive_loop():
    num_videos, num_views, num_snippets, num_classes = 3, 4, 2, 5
    generator = torch.Generator().manual_seed(0)
    logits_global = torch.randn(num_videos * num_views, num_classes, generator=generator)
    logits_local = torch.randn(num_videos * num_views, num_snippets, num_classes, generator=generator)
    scores = head_scores(logits_global, logits_local, num_views)
    for video in range(num_videos):
        expected_global = torch.zeros(num_classes)
        expected_local = torch.zeros(num_classes)
        for view in range(num_views):
            row = video * num_views + view
            expected_global += torch.softmax(logits_global[row], dim=0)
            local_sum = sum(logits_local[row, snippet] for snippet in range(num_snippets))
            expected_local += torch.softmax(local_sum, dim=0)
        torch.testing.assert_close(scores['global'][video], expected_global)
        torch.testing.assert_close(scores['local'][video], expected_local)
        torch.testing.assert_close(scores['fused'][video], expected_global + expected_local)
    assert set(head_scores(logits_global, None, num_views)) == {'global'}
    torch.testing.assert_close(view_probabilities(logits_global, 1), torch.softmax(logits_global, dim=1))


def test_release_uar_is_the_mean_of_the_stride_shards_uars_computed_by_hand():
    # 7 videos (odd): shard 0 holds list positions 0, 2, 4, 6 and shard 1 positions 1, 3, 5.
    # Class 1 is absent from shard 0, class 2 from shard 1, class 3 from both.
    targets = torch.tensor([0, 1, 2, 0, 2, 1, 0])
    predictions = torch.tensor([0, 1, 0, 0, 2, 2, 1])
    scores = torch.nn.functional.one_hot(predictions, 4).float()
    # shard 0: class 0 1/2, class 2 1/2 -> UAR 50; shard 1: class 0 1/1, class 1 1/2 -> UAR 75
    report = classification_report(scores, targets, 4, indices=torch.arange(7), release_shards=2)
    assert report['UAR_release'] == pytest.approx(62.5)
    assert report['per_class_recall_release'][:3] == pytest.approx([75.0, 50.0, 50.0])
    assert report['per_class_recall_release'][3] is None
    assert report['UAR'] == pytest.approx((200 / 3 + 50 + 50) / 3)  # over the whole list: a different number
    # the shards follow the positions in the list, not the order in which the videos arrive
    order = torch.tensor([6, 3, 0, 5, 2, 4, 1])
    shuffled = classification_report(scores[order], targets[order], 4, indices=order, release_shards=2)
    assert shuffled['UAR_release'] == report['UAR_release']
    one_shard = classification_report(scores, targets, 4, indices=torch.arange(7), release_shards=1)
    assert one_shard['UAR_release'] == pytest.approx(report['UAR'])
    assert 'UAR_release' not in classification_report(scores, targets, 4)
