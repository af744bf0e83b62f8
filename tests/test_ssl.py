"""FixMatch's loss as training computes it (FixMatch.loss, one forward pass over labeled + weak + strong)."""

import pytest
import torch
import torch.nn.functional as F

from stellar_dist.algorithms.fixmatch import FixMatch
from stellar_dist.training.config import load_config

MANIFEST = {"classes": ["GALAXY", "QSO", "STAR"], "num_input": 12, "num_samples": {"unlabeled": 10},
            "counts": {"labeled": {"GALAXY": 1, "QSO": 1, "STAR": 1}}}


class TableModel(torch.nn.Module):
    """A 'network' whose input is a row number into a logits table: the logits of every part are chosen by hand,
    and the gradient reaches exactly the rows that were used."""

    def __init__(self, *parts: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.cat(parts).clone())
        self.sizes = [len(part) for part in parts]

    def inputs(self) -> list[torch.Tensor]:
        rows = torch.arange(sum(self.sizes)).split(self.sizes)
        return [part.float()[:, None] for part in rows]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows[:, 0].long()]


def fixmatch_loss(logits_labeled, labels, logits_weak, logits_strong, threshold: float, lambda_u: float):
    """FixMatch.loss on these logits; returns the loss, its stats and the table model (for gradients)."""
    config = load_config(None, [f"ssl.threshold={threshold}", f"ssl.lambda_u={lambda_u}", "train.steps=10"])
    algorithm = FixMatch(config, MANIFEST, torch.device("cpu"))
    model = TableModel(logits_labeled, logits_weak, logits_strong)
    labeled_rows, weak_rows, strong_rows = model.inputs()
    loss, stats = algorithm.loss(model, {"image": labeled_rows, "label": labels},
                                 {"weak": weak_rows, "strong": strong_rows, "id": torch.arange(len(weak_rows))}, 0)
    return loss, stats, model


def logits_with_confidence(confidences):
    """3-class logits whose softmax max equals each given confidence, on class 0."""
    rows = []
    for confidence in confidences:
        other = (1 - confidence) / 2
        rows.append(torch.log(torch.tensor([confidence, other, other])))
    return torch.stack(rows)


def test_mask_follows_threshold_and_pseudo_labels_carry_no_gradient():
    logits_labeled = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    logits_weak = logits_with_confidence([0.99, 0.96, 0.90, 0.50])
    logits_strong = torch.randn(4, 3)
    loss, stats, model = fixmatch_loss(logits_labeled, labels, logits_weak, logits_strong, threshold=0.95,
                                       lambda_u=1.0)
    assert stats["mask"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert stats["pseudo_labels"].tolist() == [0, 0, 0, 0]
    expected_unsup = F.cross_entropy(logits_strong[:2], torch.tensor([0, 0]), reduction="sum") / 4
    assert torch.allclose(stats["unsup_loss"], expected_unsup)
    loss.backward()
    weak_grad, strong_grad = model.table.grad[4:8], model.table.grad[8:]
    assert torch.count_nonzero(weak_grad) == 0
    assert torch.count_nonzero(strong_grad[2:]) == 0 and torch.count_nonzero(strong_grad[:2]) > 0


def test_lambda_zero_equals_supervised():
    torch.manual_seed(0)
    logits_labeled, labels = torch.randn(6, 3), torch.randint(3, (6,))
    weak, strong = torch.randn(12, 3) * 10, torch.randn(12, 3)
    loss, _, _ = fixmatch_loss(logits_labeled, labels, weak, strong, threshold=0.5, lambda_u=0.0)
    assert torch.equal(loss, F.cross_entropy(logits_labeled, labels))
    loss_on, stats, _ = fixmatch_loss(logits_labeled, labels, weak, strong, threshold=0.5, lambda_u=2.0)
    assert stats["mask"].sum() > 0 and loss_on > loss


def test_ema_update_matches_averaged_model_with_its_counter_on_the_host():
    """optim.update_ema (foreach kernels, host counter: no device sync per step) computes what
    AveragedModel.update_parameters with the warmup-decay lerp computes, to the bit; buffers are copied."""
    from torch.optim.swa_utils import AveragedModel

    from stellar_dist.training.optim import ema_weight, keep_count_on_host, update_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))

    def reference_fn(averaged, current, num_averaged):
        for a, c in zip(averaged, current):
            a.lerp_(c, ema_weight(0.99, int(num_averaged)))

    ours = keep_count_on_host(AveragedModel(model, use_buffers=False))
    reference = AveragedModel(model, multi_avg_fn=reference_fn, use_buffers=False)
    for _ in range(5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(8, 4))  # moves the batch-norm statistics
        update_ema(ours, model, 0.99)
        reference.update_parameters(model)
    assert ours.n_averaged.device.type == "cpu" and int(ours.n_averaged) == 5
    assert all(torch.equal(a, b) for a, b in zip(ours.module.parameters(), reference.module.parameters()))
    assert torch.equal(ours.module[1].running_mean, model[1].running_mean)


HOST_READS = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__")


@pytest.mark.parametrize("algorithm", ["fixmatch", "softmatch", "flexmatch"])  # all 6 measured: 0 reads
def test_training_steps_never_read_a_tensor_on_the_host_outside_log_intervals(sim_shards, tmp_path, monkeypatch,
                                                                                 algorithm):
    """On a GPU every host read of a tensor (.item(), .cpu(), bool(), .nonzero(), ...) waits for the device. The
    same code path on CPU, counted: a run of 8 steps reads exactly as often as a run of 4 when both log once, so
    the 4 extra steps read nothing (sync-free), with the views made on the device, FixMatch, the EMA and the
    per-step diagnostics. The EMA's counter is read every step: it lives on the host (no device to wait for). (On CUDA bench/gpu_smoke.py counts the same with torch.cuda.set_sync_debug_mode.)
    Images are read in a DataLoader worker (another process: not counted)."""
    from stellar_dist.training.engine import train_loop
    from stellar_dist.training.session import setup

    reads, on_host = [], []  # on_host: the EMA's update counter, kept on the host by design (optim.py)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, **kwargs):
            if not any(self is tensor for tensor in on_host):
                reads.append(1)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    totals = []
    for steps in (4, 8):
        config = load_config(None, [f"data.shards={sim_shards}", f"output_dir={tmp_path / str(steps)}",
                                    "model.arch=resnet18", f"ssl.algorithm={algorithm}", f"train.steps={steps}",
                                    f"train.log_every_steps={steps}", "eval.every_steps=0", "checkpoint.every_steps=0",
                                    "cluster.at_end=false", "data.num_workers=1", "data.augment_on=device",
                                    "train.batch_size=4", "ssl.mu=2", "tracking=none"])
        run = setup(config)
        on_host[:] = [run.ema.n_averaged]
        reads.clear()
        assert train_loop(run) == steps
        totals.append(len(reads))
    assert totals[0] == totals[1] and totals[0] > 0  # reads happen, at the one log interval only
