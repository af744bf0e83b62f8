import torch

import torch.nn.functional as F

from stellar_dist.algorithms.fixmatch import fixmatch_loss


def logits_with_confidence(confidences):
    """3-class logits whose softmax max equals each given confidence, on class 0."""
    rows = []
    for confidence in confidences:
        other = (1 - confidence) / 2
        rows.append(torch.log(torch.tensor([confidence, other, other])))
    return torch.stack(rows)


def test_mask_follows_threshold_and_pseudo_labels_carry_no_gradient():
    logits_labeled = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    logits_weak = logits_with_confidence([0.99, 0.96, 0.90, 0.50]).requires_grad_(True)
    logits_strong = torch.randn(4, 3, requires_grad=True)
    loss, stats = fixmatch_loss(logits_labeled, labels, logits_weak, logits_strong, threshold=0.95, lambda_u=1.0)
    assert stats["mask"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert stats["pseudo_labels"].tolist() == [0, 0, 0, 0]
    expected_unsup = torch.nn.functional.cross_entropy(logits_strong[:2], torch.tensor([0, 0]), reduction="sum") / 4
    assert torch.allclose(stats["unsup_loss"], expected_unsup)
    loss.backward()
    assert logits_weak.grad is None or torch.count_nonzero(logits_weak.grad) == 0
    assert torch.count_nonzero(logits_strong.grad[2:]) == 0 and torch.count_nonzero(logits_strong.grad[:2]) > 0


def test_lambda_zero_equals_supervised():
    torch.manual_seed(0)
    logits_labeled, labels = torch.randn(6, 3), torch.randint(3, (6,))
    weak, strong = torch.randn(12, 3) * 10, torch.randn(12, 3)
    loss, _ = fixmatch_loss(logits_labeled, labels, weak, strong, threshold=0.5, lambda_u=0.0)
    assert torch.equal(loss, F.cross_entropy(logits_labeled, labels))
    loss_on, stats = fixmatch_loss(logits_labeled, labels, weak, strong, threshold=0.5, lambda_u=2.0)
    assert stats["mask"].sum() > 0 and loss_on > loss
