"""Each algorithm's loss and statistics on hand-made tensors; class statistics identical on 2 ranks and 1 process."""

import math

import pytest
import torch
import torch.nn.functional as F

from stellar_dist.algorithms import ALGORITHMS
from stellar_dist.algorithms.alignment import align
from stellar_dist.algorithms.flexmatch import class_thresholds, learning_effect
from stellar_dist.algorithms.freematch import fairness_loss
from stellar_dist.algorithms.mixmatch import mixmatch_loss, mixup, sharpen
from stellar_dist.training.config import load_config
from stellar_dist.core.errors import UserError

MANIFEST = {"classes": ["GALAXY", "QSO", "STAR"], "num_input": 12, "num_samples": {"unlabeled": 10},
            "counts": {"labeled": {"GALAXY": 6, "QSO": 1, "STAR": 3}}}


def make(name: str, *overrides: str):
    config = load_config(None, [f"ssl.algorithm={name}", "train.steps=100", *overrides])
    return ALGORITHMS[name](config, MANIFEST, torch.device("cpu"))


def test_flexmatch_learning_effect_and_thresholds():
    selected = torch.tensor([0, 0, 0, 1, -1, -1, -1, -1, -1, -1, -1, -1], dtype=torch.int16)
    # warm-up: 6 of the 10 unlabeled samples never confident -> normaliser 6
    assert torch.allclose(learning_effect(selected, 3, 10, warmup=True), torch.tensor([3 / 6, 1 / 6, 0.0]))
    assert torch.allclose(learning_effect(selected, 3, 10, warmup=False), torch.tensor([1.0, 1 / 3, 0.0]))
    thresholds = class_thresholds(torch.tensor([1.0, 0.5, 0.0]), 0.9)
    assert torch.allclose(thresholds, torch.tensor([0.9, 0.9 * 0.5 / 1.5, 0.0]))  # convex M(x) = x / (2 - x)


def test_flexmatch_masks_by_class_and_records_confident_samples():
    algorithm = make("flexmatch", "ssl.threshold=0.9", "ssl.flexmatch.warmup=false")
    algorithm.selected[:4] = torch.tensor([0, 0, 0, 1], dtype=torch.int16)  # effect: GALAXY 1, QSO 1/3, STAR 0
    probabilities = torch.tensor([[0.85, 0.1, 0.05], [0.1, 0.5, 0.4], [0.05, 0.05, 0.9], [0.95, 0.03, 0.02]])
    mask = algorithm.threshold_mask(probabilities, torch.tensor([4, 5, 6, 7]))
    # GALAXY needs 0.9, QSO 0.9 x (1/3)/(5/3) = 0.18, STAR 0
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert algorithm.selected[4:8].tolist() == [-1, -1, 2, 0]  # only >= ssl.threshold is recorded


def test_freematch_thresholds_follow_the_ema_and_fairness_loss():
    algorithm = make("freematch", "ssl.freematch.ema_momentum=0.0")  # EMA = this batch: hand-checkable
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    mask = algorithm.threshold_mask(probabilities, torch.arange(3))
    tau = (0.7 + 0.6 + 0.5) / 3
    p_model = probabilities.mean(0)
    assert torch.allclose(algorithm.tau, torch.tensor(tau))
    assert torch.allclose(algorithm.histogram, torch.tensor([2 / 3, 0.0, 1 / 3]))
    expected = [p[p.argmax()] >= tau * p_model[p.argmax()] / p_model.max() for p in probabilities]
    assert mask.tolist() == [float(value) for value in expected]
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])).requires_grad_(True)
    p_model, histogram = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.5, 0.25, 0.25])
    loss = fairness_loss(logits, torch.ones(2), p_model, histogram)
    target = (p_model / histogram) / (p_model / histogram).sum()
    mean = torch.tensor([0.3, 0.45, 0.25]) * 2  # mean softmax / batch histogram (1/2 each for classes 0 and 1)
    mean = torch.tensor([mean[0], mean[1], 0.0]) / (mean[0] + mean[1])
    assert torch.allclose(loss, (target * torch.log(mean + 1e-12)).sum(), atol=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert fairness_loss(logits, torch.zeros(2), p_model, histogram).item() == 0.0


def test_softmatch_weights_every_pseudo_label_by_a_truncated_gaussian():
    algorithm = make("softmatch", "ssl.softmatch.ema_momentum=0.0", "ssl.softmatch.alignment=none")
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5]])
    weights = algorithm.threshold_mask(probabilities, torch.arange(3))
    # EMA = this batch: mean confidence 0.6, unbiased variance 0.01; at or above the mean: 1; below: Gaussian
    assert torch.allclose(algorithm.mean, torch.tensor(0.6)) and torch.allclose(algorithm.variance, torch.tensor(0.01))
    assert torch.allclose(weights, torch.tensor([1.0, 1.0, math.exp(-(0.1**2) / (2 * 0.01 / 2.0**2))]), atol=1e-4)
    state = algorithm.state_dict()
    again = make("softmatch")
    again.load_state_dict(state)
    assert torch.equal(again.mean, algorithm.mean) and torch.equal(again.variance, algorithm.variance)
    # Uniform alignment: the batch's mean prediction is pulled towards uniform (a rare class gains weight).
    aligned = make("softmatch", "ssl.softmatch.ema_momentum=0.0")
    skewed = torch.tensor([[0.8, 0.15, 0.05], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    after = aligned.alignment(skewed)
    assert torch.allclose(after.sum(-1), torch.ones(3))
    assert torch.allclose(after.mean(0), torch.full((3,), 1 / 3), atol=0.05) and after[:, 2].mean() > 0.2
    loss, stats = aligned.loss(lambda images: images, {"image": torch.randn(2, 3), "label": torch.tensor([0, 1])},
                               {"weak": skewed.log(), "strong": torch.randn(3, 3), "id": torch.arange(3)}, 0)
    assert stats["mask"].shape == (3,) and 0 < stats["mask"].min() <= stats["mask"].max() <= 1
    # Aligned to the labeled split's class shares instead: the batch mean is pulled there, not to uniform.
    labeled = make("softmatch", "ssl.softmatch.ema_momentum=0.0", "ssl.softmatch.alignment=labeled")
    assert torch.equal(labeled.alignment.target, labeled.labeled_prior)
    assert torch.allclose(labeled.alignment(skewed).mean(0), labeled.labeled_prior, atol=0.05)
    assert not torch.allclose(labeled.labeled_prior, torch.full((3,), 1 / 3), atol=0.05)
    with pytest.raises(UserError, match="ssl.softmatch.alignment='balanced' is not one of uniform, labeled, none"):
        make("softmatch", "ssl.softmatch.alignment=balanced")


def test_mixmatch_sharpen_mixup_and_loss():
    sharpened = sharpen(torch.tensor([[0.6, 0.4]]), 0.5)
    assert torch.allclose(sharpened, torch.tensor([[0.36, 0.16]]) / 0.52)
    inputs, targets = torch.tensor([[1.0], [0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed, mixed_targets = mixup(inputs, targets, 0.3, torch.tensor([1, 0]))  # lam -> max(0.3, 0.7) = 0.7
    assert torch.allclose(mixed, torch.tensor([[0.7], [0.3]]))
    assert torch.allclose(mixed_targets, torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    logits_l, logits_u = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    loss, stats = mixmatch_loss(logits_l, torch.tensor([[1.0, 0.0]]), logits_u, torch.tensor([[1.0, 0.0]]), 10.0)
    assert math.isclose(stats["sup_loss"].item(), -F.log_softmax(logits_l, -1)[0, 0].item(), rel_tol=1e-6)
    assert math.isclose(stats["unsup_loss"].item(), 0.25, rel_tol=1e-6)  # ((0.5-1)^2 + 0.5^2) / 2
    assert math.isclose(loss.item(), stats["sup_loss"].item() + 2.5, rel_tol=1e-6)


def test_alignment_ramps_and_logit_adjustment():
    aligned = align(torch.tensor([[0.8, 0.1, 0.1]]), torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.8, 0.1, 0.1]))
    assert torch.allclose(aligned, torch.tensor([[0.5, 0.25, 0.25]]))
    pseudo = make("pseudolabel", "ssl.pseudolabel.rampup_fraction=0.5", "ssl.lambda_u=2")
    assert [pseudo.unsup_weight(step) for step in (0, 25, 50, 90)] == [0.0, 1.0, 2.0, 2.0]
    supervised = make("supervised", "train.logit_adjustment=1.0")
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    prior = torch.tensor([0.6, 0.1, 0.3])
    assert torch.allclose(supervised.supervised(logits, labels), F.cross_entropy(logits + prior.log(), labels))


@pytest.mark.parametrize("name", [name for name in ALGORITHMS if name != "deepcluster"])
def test_every_algorithm_trains_one_step_and_keeps_its_views(name):
    from stellar_dist.model.network import StellarNet

    torch.manual_seed(0)
    algorithm = make(name)
    model = StellarNet("resnet18", 3)
    labeled = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}
    unlabeled = {view: torch.rand(8, 3, 32, 32) for view in algorithm.unlabeled_views} | {"id": torch.arange(8)}
    loss, stats = algorithm.loss(model, labeled if algorithm.needs_labeled else None, unlabeled, step=50)
    loss.backward()
    assert torch.isfinite(loss) and model.classifier.weight.grad.abs().sum() > 0
    assert set(algorithm.unlabeled_views) <= {"weak", "strong", "weak0", "weak1"}
    if algorithm.unlabeled_views:
        assert stats["mask"].shape == (8,) and stats["pseudo_labels"].shape == (8,)
    saved = algorithm.state_dict()
    fresh = make(name)
    fresh.load_state_dict(saved)
    assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(fresh.state_dict()[key]))
               for key, value in saved.items() if torch.is_tensor(value))


def test_class_statistics_are_identical_on_two_ranks_and_equal_one_process(sim_shards, tmp_path):
    from accelerate.utils import set_seed

    from ddp_probe import TINY, algorithm_states
    from stellar_dist.data.manifest import load_manifest
    from stellar_dist.model.network import StellarNet
    from test_ddp import launch

    launch("state", str(tmp_path), str(sim_shards))
    rank0, rank1 = (torch.load(tmp_path / f"state{rank}.pt", weights_only=True) for rank in (0, 1))
    set_seed(load_config(None, TINY).seed)
    model = StellarNet("resnet18", 3).eval()
    single = algorithm_states(model, load_manifest(sim_shards), torch.device("cpu"), 0, str(sim_shards),
                              world_size=1)
    assert (single["flexmatch"]["selected"] >= 0).sum() > 0, "no confident sample: the test would prove nothing"
    for name, state in single.items():
        for key, value in state.items():
            value = value if torch.is_tensor(value) else value["running_mean"]
            got0 = rank0[name][key] if torch.is_tensor(rank0[name][key]) else rank0[name][key]["running_mean"]
            got1 = rank1[name][key] if torch.is_tensor(rank1[name][key]) else rank1[name][key]["running_mean"]
            assert torch.equal(got0, got1), (name, key)  # every rank holds the same state
            assert torch.allclose(got0.float(), value.float(), atol=1e-5), (name, key)  # == one process


def test_a_new_algorithm_is_one_file(monkeypatch):
    """Everything an algorithm needs lives in its class (as it would in algorithms/toymatch.py plus one line in
    ALGORITHMS): its options section with ranges, its state, its loss. Config, engine and checkpoints need no
    change."""
    from dataclasses import dataclass
    from typing import ClassVar

    from stellar_dist.algorithms.fixmatch import FixMatch
    from stellar_dist.core.errors import UserError

    @dataclass(frozen=True)
    class ToyOptions:
        scale: float = 0.5  # multiplies the unsupervised weight
        RANGES: ClassVar[dict] = {"scale": "[0, 1]"}

    class ToyMatch(FixMatch):
        Options = ToyOptions

        def unsup_weight(self, step):
            return self.ssl.lambda_u * self.options.scale

    monkeypatch.setitem(ALGORITHMS, "toymatch", ToyMatch)
    algorithm = make("toymatch", "ssl.toymatch.scale=0.25", "ssl.lambda_u=2")
    assert algorithm.options == ToyOptions(scale=0.25) and algorithm.unsup_weight(0) == 0.5
    with pytest.raises(UserError, match=r"ssl.toymatch.scale=2.0 is out of range"):
        make("toymatch", "ssl.toymatch.scale=2")
    from stellar_dist.training.config import to_dict

    assert to_dict(load_config(None, ["ssl.algorithm=toymatch"]))["ssl"]["toymatch"] == {"scale": 0.5}
