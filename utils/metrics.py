"""Evaluation metrics: pure, vectorised functions of scores and labels (docs/model.md, section 16).

All figures are in percent, as in the published tables. WAR (weighted average recall) is the accuracy
over all test videos; UAR (unweighted average recall) is the mean of the per-class recalls over the
classes present in the ground truth. A class absent from the ground truth has no recall (``nan`` in
tensors, ``None`` in reports); a class that is never predicted has recall 0.

``UAR_release`` is the figure the official release published: the test list split by stride into shards
(video i in shard i mod n, as the release split it over its GPUs), UAR computed on each shard, then
averaged over the shards (docs/data.md, section 15).
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


def shard_confusion_matrices(targets, predictions, shard_ids, num_shards, num_classes):
    """One confusion matrix per shard.

    Args:
        targets, predictions: int64 ``[N]``.
        shard_ids: int64 ``[N]`` shard of each video in ``[0, num_shards)``.
        num_shards: n.
        num_classes: K.

    Returns:
        int64 ``[n, K, K]``.
    """
    codes = (shard_ids.long() * num_classes + targets.long()) * num_classes + predictions.long()
    counts = torch.bincount(codes, minlength=num_shards * num_classes * num_classes)
    return counts.reshape(num_shards, num_classes, num_classes)


def release_recall(targets, predictions, shard_ids, num_shards, num_classes):
    """The release's UAR and per-class recall: means over the shards of each shard's figures.

    A shard's UAR averages the classes present in that shard; a class's recall averages the shards it
    is present in (``nan`` if in none). A shard without any video is left out.

    Returns:
        (UAR in percent, float64 ``[K]`` per-class recall in percent).
    """
    matrices = shard_confusion_matrices(targets, predictions, shard_ids, num_shards, num_classes)
    matrices = matrices[matrices.sum(dim=(1, 2)) > 0]
    recall = torch.stack([per_class_recall(matrix) for matrix in matrices])  # [n, K]
    return recall.nanmean(dim=1).mean().item(), recall.nanmean(dim=0)


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


def _recall_list(recall):
    return [None if value != value else value for value in recall.tolist()]  # nan -> None


def classification_report(scores, targets, num_classes, indices=None, release_shards=0):
    """UAR, WAR, per-class recall and the confusion matrix of one head; with ``release_shards``, the
    release's UAR too.

    Args:
        scores: ``[N, K]`` class scores (the argmax is the prediction).
        targets: int64 ``[N]``.
        num_classes: K.
        indices: int64 ``[N]`` positions of the videos in the test list (needed for ``release_shards``).
        release_shards: n > 0 adds ``UAR_release`` and ``per_class_recall_release`` over n stride shards
            of the list (:func:`release_recall`).

    Returns:
        dict with ``UAR`` and ``WAR`` (floats, percent), ``per_class_recall`` (K floats in percent,
        None for a class absent from the ground truth), ``confusion_matrix`` (K lists of K ints) and
        the release figures when asked: plain Python values, ready for JSON.
    """
    targets, predictions = targets.cpu(), scores.argmax(dim=-1).cpu()
    matrix = confusion_matrix(targets, predictions, num_classes)
    report = {
        'UAR': unweighted_average_recall(matrix),
        'WAR': weighted_average_recall(matrix),
        'per_class_recall': _recall_list(per_class_recall(matrix)),
        'confusion_matrix': matrix.tolist(),
    }
    if release_shards and len(targets):
        shard_ids = indices.cpu() % release_shards
        uar, recall = release_recall(targets, predictions, shard_ids, release_shards, num_classes)
        report.update(UAR_release=uar, per_class_recall_release=_recall_list(recall))
    return report


def evaluate_heads(scores_by_head, targets, num_classes, indices=None, release_shards=0):
    """:func:`classification_report` for each head of ``scores_by_head`` (dict head -> ``[N, K]``)."""
    return {head: classification_report(scores, targets, num_classes, indices, release_shards)
            for head, scores in scores_by_head.items()}
