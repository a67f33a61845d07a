"""Evaluation metrics: pure, vectorised functions of scores and labels (docs/model.md, section 16).

All figures are in percent, as in the published tables. WAR (weighted average recall) is the accuracy
over all test videos; UAR (unweighted average recall) is the mean of the per-class recalls over the
classes present in the ground truth. A class absent from the ground truth has no recall (``nan`` in
tensors, ``None`` in reports); a class that is never predicted has recall 0.
"""
import torch

HEADS = ('global', 'local', 'fused')


def confusion_matrix(targets, predictions, num_classes):
    """Count (true class, predicted class) pairs.

    Args:
        targets: int64 ``[N]`` true classes in ``[0, num_classes)``.
        predictions: int64 ``[N]`` predicted classes in ``[0, num_classes)``.
        num_classes: K.

    Returns:
        int64 ``[K, K]``: row = true class, column = predicted class (scikit-learn's layout).
    """
    pair_codes = targets.long() * num_classes + predictions.long()
    return torch.bincount(pair_codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(matrix):
    """Recall of each class in percent; ``nan`` for a class absent from the ground truth.

    Args:
        matrix: ``[K, K]`` confusion matrix from :func:`confusion_matrix`.

    Returns:
        float64 ``[K]``.
    """
    support = matrix.sum(dim=1).double()
    correct = matrix.diagonal().double()
    recall = 100.0 * correct / support.clamp_min(1)
    return torch.where(support > 0, recall, torch.full_like(recall, float('nan')))


def unweighted_average_recall(matrix):
    """UAR in percent: the mean recall over the classes present in the ground truth."""
    return per_class_recall(matrix).nanmean().item()


def weighted_average_recall(matrix):
    """WAR in percent: correct predictions over all samples (the accuracy)."""
    return (100.0 * matrix.diagonal().sum().double() / matrix.sum().clamp_min(1)).item()


def view_probabilities(logits, num_views):
    """Sum the softmax probabilities of the test views of each video.

    Args:
        logits: ``[N * V, K]`` logits, the V views of a video consecutive.
        num_views: V (``TEST.NUM_CLIP`` x ``TEST.NUM_CROP``).

    Returns:
        float32 ``[N, K]``: sum over views of softmax(logits).
    """
    probabilities = logits.float().softmax(dim=-1)
    return probabilities.reshape(-1, num_views, probabilities.shape[-1]).sum(dim=1)  # [N, K]


def head_scores(logits_global, logits_local, num_views):
    """Scores of the three heads for a batch of videos.

    Args:
        logits_global: ``[N * V, K]``.
        logits_local: ``[N * V, S, K]`` per-snippet logits, or None when the local branch is off.
        num_views: V.

    Returns:
        dict head -> ``[N, K]``: ``global`` (sum of softmax(g) over views), ``local`` (the same for the
        snippet-summed local logits) and ``fused`` (their sum); only ``global`` without a local branch.
    """
    scores = {'global': view_probabilities(logits_global, num_views)}
    if logits_local is not None:
        scores['local'] = view_probabilities(logits_local.sum(dim=1), num_views)  # [N, K]
        scores['fused'] = scores['global'] + scores['local']
    return scores


def classification_report(scores, targets, num_classes):
    """UAR, WAR, per-class recall and the confusion matrix of one head.

    Args:
        scores: ``[N, K]`` class scores (the argmax is the prediction).
        targets: int64 ``[N]``.
        num_classes: K.

    Returns:
        dict with ``UAR`` and ``WAR`` (floats, percent), ``per_class_recall`` (K floats in percent,
        None for a class absent from the ground truth) and ``confusion_matrix`` (K lists of K ints):
        plain Python values, ready for JSON.
    """
    matrix = confusion_matrix(targets.cpu(), scores.argmax(dim=-1).cpu(), num_classes)
    recall = per_class_recall(matrix).tolist()
    return {
        'UAR': unweighted_average_recall(matrix),
        'WAR': weighted_average_recall(matrix),
        'per_class_recall': [None if value != value else value for value in recall],  # nan -> None
        'confusion_matrix': matrix.tolist(),
    }


def evaluate_heads(scores_by_head, targets, num_classes):
    """:func:`classification_report` for each head of ``scores_by_head`` (dict head -> ``[N, K]``)."""
    return {head: classification_report(scores, targets, num_classes)
            for head, scores in scores_by_head.items()}
