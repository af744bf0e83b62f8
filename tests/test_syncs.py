"""A training step never makes the host wait for the device, for every algorithm and option: the syncing ops
(training/syncs.py: host reads, value-dependent shapes such as boolean-mask indexing, bincount or nonzero, host
values made tensors) are counted at the dispatcher, per step, on the CPU path; only the log steps may read."""

import pytest
import torch

from conftest import TEST_ARCH
from stellar_dist.training.config import load_config

CASES = {
    "supervised": ["ssl.algorithm=supervised", "train.logit_adjustment=1.0", "data.balanced_labeled=true"],
    "supervised+photometry": ["ssl.algorithm=supervised", "model.photometry=true", "model.centre_crop=16"],
    "pseudolabel": ["ssl.algorithm=pseudolabel"],
    "mixmatch": ["ssl.algorithm=mixmatch"],
    "fixmatch": ["ssl.algorithm=fixmatch", "data.augment_on=device"],
    "fixmatch+alignment": ["ssl.algorithm=fixmatch", "ssl.distribution_alignment=true"],
    "flexmatch": ["ssl.algorithm=flexmatch"],
    "freematch": ["ssl.algorithm=freematch"],
    "softmatch": ["ssl.algorithm=softmatch", "train.logit_adjustment=0.5"],
    "softmatch+labeled": ["ssl.algorithm=softmatch", "ssl.softmatch.alignment=labeled"],
    "deepcluster": ["ssl.algorithm=deepcluster", "cluster.every_steps=100", "cluster.at_end=false"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_training_step_has_no_device_sync(sim_shards, tmp_path, case):
    from stellar_dist.training.engine import train_loop
    from stellar_dist.training.session import setup
    from stellar_dist.training.syncs import SyncCounter

    config = load_config(None, [f"data.shards={sim_shards}", f"output_dir={tmp_path / case}", f"model.arch={TEST_ARCH}",
                                "train.steps=6", "train.log_every_steps=3", "eval.every_steps=0",
                                "checkpoint.every_steps=0", "cluster.at_end=false", "data.num_workers=1",
                                "train.batch_size=4", "ssl.mu=2", "tracking=none", *CASES[case]])
    run = setup(config)
    # the EMA's update counter is kept on the host by design (optim.py): reading it waits for no device
    with SyncCounter(step=lambda: run.step, on_host=(run.ema.n_averaged,)) as syncs:
        assert train_loop(run) == 6
    quiet = {2, 4, 5}  # not log steps: nothing may wait for the device (step 1 may fill one-time caches)
    assert not syncs.by_line(quiet), f"{case}: syncs in steps {sorted(quiet)}: {syncs.by_line(quiet)}"
    assert syncs.by_step().get(3, 0) > 0  # the counter sees the log step's reads (it can fail)
    if "data.augment_on=device" in CASES[case]:  # where the time goes: blocked on loaders vs making views
        import json

        logged = [json.loads(line) for line in (tmp_path / case / "log.jsonl").read_text().splitlines()]
        shares = [row for row in logged if "train/device_views_share" in row]
        assert len(shares) == 2 and all(0 < row["train/device_views_share"] < 1 and
                                        0 <= row["train/data_wait_share"] < 1 for row in shares)


def test_the_counter_names_what_syncs_and_where():
    from stellar_dist.training.syncs import SyncCounter

    values = torch.rand(16)
    with SyncCounter() as syncs:
        values[values > 0.5].sum()  # a boolean-mask index: a nonzero on the device, then a host read of its size
        torch.tensor([1.0]) + values[:1]  # a Python value made a tensor: a copy from host memory
        torch.bincount(values.mul(3).long(), minlength=3)
        values.new_full((1,), 2.0) * values.masked_fill(values > 0.5, 0.0)  # none of these syncs
    assert [where.split()[-1] for where in syncs.by_line()] == ["index", "lift_fresh", "bincount"]
    assert all(where.startswith("tests/test_syncs.py:") or "test_syncs.py" in where for where in syncs.by_line())


def test_a_rank_without_samples_enters_the_gathers_with_tensors_on_its_device():
    """NCCL takes only tensors on the process's GPU: a rank with no samples must not contribute CPU tensors (a
    factory without device=). Checked with the `meta` device standing in for a GPU."""
    from stellar_dist.clustering.features import _concatenated

    found = _concatenated({"ids": [], "labels": [], "features": []}, {"features": 8}, torch.device("meta"))
    assert {tensor.device.type for tensor in found.values()} == {"meta"} and found["features"].shape == (0, 8)


def test_cluster_sums_by_block_products_equal_index_add():
    """The GPU path of k-means' centroid sums (one-hot products in row blocks), run here on the CPU, equals
    index_add_'s sums (the CPU path)."""
    from stellar_dist.clustering.cluster import cluster_sums

    rows = torch.randn(5000, 16, dtype=torch.float64)
    assignment = torch.randint(0, 7, (5000,))
    expected = torch.zeros(7, 16, dtype=torch.float64).index_add_(0, assignment, rows)
    assert torch.equal(cluster_sums(assignment, rows, 7), expected)
    assert torch.allclose(cluster_sums(assignment, rows, 7, blocked=True), expected, rtol=0, atol=1e-9)
    assert torch.allclose(cluster_sums(assignment, rows, 2000, blocked=True)[:7], expected, rtol=0, atol=1e-9)


def test_evaluation_and_clustering_forward_in_the_runs_precision(sim_shards, tmp_path):
    """A run that trains in bf16 (the default on GPUs) extracts its re-clustering features and its in-training
    evaluations in bf16 too (half the memory traffic of an fp32 EMA forward); float32 comes out, close to the full
    precision values; a run in full precision stays in full precision. Run here with CPU autocast."""
    from stellar_dist.clustering.features import extract_features
    from stellar_dist.training.evaluation import gather_predictions
    from stellar_dist.training.session import setup

    def run_in(precision):
        AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator's precision per process
        return setup(load_config(None, [f"data.shards={sim_shards}", f"output_dir={tmp_path / precision}",
                                        f"model.arch={TEST_ARCH}", f"train.mixed_precision={precision}",
                                        "tracking=none", "data.num_workers=0"]))

    from accelerate.state import AcceleratorState

    run = run_in("bf16")
    data = run.head.data
    assert data.autocast_dtype is torch.bfloat16
    passes = {"batch_size": 32, "num_workers": 0, "grayscale": False, "device": data.device}
    full = extract_features(run.ema.module, data.shards, data.manifest, **passes).features
    half = extract_features(run.ema.module, data.shards, data.manifest, autocast_dtype=data.autocast_dtype,
                            **passes).features
    assert half.dtype == torch.float32 and half.shape == full.shape and not torch.equal(half, full)
    assert torch.nn.functional.cosine_similarity(half, full).min() > 0.99
    full, half = (gather_predictions(run.ema.module, data.shards, data.manifest, autocast_dtype=dtype, **passes)
                  for dtype in (None, torch.bfloat16))
    assert (half["id"] == full["id"]).all() and not (half["probability"] == full["probability"]).all()
    assert abs(half["probability"] - full["probability"]).max() < 0.05
    assert run_in("no").head.data.autocast_dtype is None  # the other tests' precision, restored
