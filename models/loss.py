"""DK-CLIP's training objective: global CE plus, for the first epochs, the local CE and the class-aware
consistency term (docs/model.md, section 12). The criterion takes the model's outputs by name, so a new
term is written here alone (docs/model.md, "Adding a loss term")."""
import torch
import torch.nn.functional as F
from torch import nn


def classification_loss(logits, targets, label_smoothing):
    """Cross entropy against hard labels [B] (with label smoothing) or soft targets [B, K] (mixup's, which
    carry their smoothing already)."""
    logits = logits.float()
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, targets.to(logits.dtype))


def official_consistency(local_logits, global_logits):
    """The release's term: soft-target CE with *probabilities* as the input and ``softmax(g)`` as the
    target, gradient into both heads: ``mean_b sum_k -softmax(g)_k log_softmax(softmax(l))_k``."""
    return F.cross_entropy(local_logits.softmax(dim=-1), global_logits.softmax(dim=-1))


def kl_consistency(local_logits, global_logits):
    """``KL(softmax(g) || softmax(l))`` averaged over the batch, the global distribution detached."""
    target = global_logits.detach().softmax(dim=-1)
    return F.kl_div(local_logits.log_softmax(dim=-1), target, reduction='batchmean')


CONSISTENCY_TERMS = {'official': official_consistency, 'kl': kl_consistency}


class DKCLIPLoss(nn.Module):
    """``CE(g) + weight (CE(l_sum) + consistency(l_sum, g))`` for epochs before ``consistency_epochs``,
    ``CE(g)`` afterwards or without a local head (``l_sum``: local logits summed over the snippets);
    :func:`build_criterion` maps the config keys to the arguments."""

    def __init__(self, consistency, weight, consistency_epochs, label_smoothing):
        super().__init__()
        self.consistency = CONSISTENCY_TERMS[consistency]
        self.weight = weight
        self.consistency_epochs = consistency_epochs
        self.label_smoothing = label_smoothing

    def forward(self, targets, epoch, *, logits_global, logits_local=None, **outputs):
        """Labels [B] or soft targets [B, K], the 0-based epoch and the model's outputs by name (g [B, K],
        l [B, S, K] or None, and the others, unused here) -> ``(loss, parts)``: the loss with gradient
        and its detached terms, each logged under its name (zero where a term is not used)."""
        loss_global = classification_loss(logits_global, targets, self.label_smoothing)
        zero = torch.zeros_like(loss_global)
        loss_local = loss_consistency = zero
        loss = loss_global
        if logits_local is not None and epoch < self.consistency_epochs:
            local_sum = logits_local.float().sum(dim=1)  # [B, K]
            loss_local = classification_loss(local_sum, targets, self.label_smoothing)
            loss_consistency = self.consistency(local_sum, logits_global.float())
            loss = loss_global + self.weight * (loss_local + loss_consistency)
        parts = dict(loss_global=loss_global.detach(), loss_local=loss_local.detach(),
                     loss_consistency=loss_consistency.detach())
        return loss, parts


def build_criterion(config):
    """The objective of ``config`` (``LOSS.*``, ``TRAIN.CONSISTENCY_EPOCHS``, ``AUG.LABEL_SMOOTH``)."""
    return DKCLIPLoss(consistency=config.LOSS.CONSISTENCY, weight=config.LOSS.LAMBDA,
                      consistency_epochs=config.TRAIN.CONSISTENCY_EPOCHS,
                      label_smoothing=config.AUG.LABEL_SMOOTH)
