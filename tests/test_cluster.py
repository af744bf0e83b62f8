import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from stellar_dist.clustering.cluster import (cluster_accuracy, initial_centroids, kmeans_faiss, kmeans_torch,
                                             match_clusters, split_empty_clusters)


def blobs(num_per_blob=200, k=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, dim))
    labels = np.repeat(np.arange(k), num_per_blob)
    return (centres[labels] + rng.normal(0, 0.5, size=(len(labels), dim))).astype(np.float32), labels


def test_hungarian_accuracy_is_one_on_permuted_labels():
    labels = np.random.default_rng(0).integers(0, 3, 300)
    permuted = np.array([2, 0, 1])[labels]
    assert cluster_accuracy(labels, permuted, num_classes=3, k=3) == 1.0


def test_hungarian_hand_case_and_many_to_one():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([1, 1, 0, 0, 0, 2, 2, 1])
    # table rows=clusters: c0 -> {0:1, 1:2}, c1 -> {0:2, 2:1}, c2 -> {2:2}; best one-to-one: c0->1, c1->0, c2->2
    assert match_clusters(true, clusters, 3, 3).tolist() == [1, 0, 2]
    assert cluster_accuracy(true, clusters, 3, 3) == 6 / 8
    five = np.array([0, 1, 1, 2, 2, 3, 4, 1])  # k=5 > 3 classes: majority class per cluster (c1: 0, 0, 2)
    assert cluster_accuracy(true, five, 3, 5) == 7 / 8


def test_empty_cluster_is_split_from_the_largest():
    centroids = torch.tensor([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    counts = torch.tensor([10, 0, 90])
    fixed = split_empty_clusters(centroids, counts, torch.Generator().manual_seed(0))
    assert torch.allclose(fixed[1], torch.tensor([9.0, 9.0]), atol=1e-3)
    assert not torch.equal(fixed[1], fixed[2]) and torch.equal(fixed[0], centroids[0])


def test_faiss_and_torch_agree_on_separated_blobs():
    features, labels = blobs()
    _, faiss_assign, faiss_inertia = kmeans_faiss(features, 5, seed=1)
    ids = torch.arange(len(features))
    _, torch_assign, torch_inertia = kmeans_torch(torch.from_numpy(features), ids, 5, seed=1)
    assert abs(faiss_inertia - torch_inertia) / torch_inertia < 0.01
    assert normalized_mutual_info_score(labels, faiss_assign.numpy()) > 0.99
    assert normalized_mutual_info_score(labels, torch_assign.numpy()) > 0.99


def test_seeded_and_never_from_global_rng():
    features, _ = blobs(k=4, seed=3)
    torch.manual_seed(123)
    np.random.seed(123)
    first = kmeans_faiss(features, 6, seed=5)[1]
    torch.manual_seed(999)
    np.random.seed(999)
    assert torch.equal(first, kmeans_faiss(features, 6, seed=5)[1])
    assert (torch.bincount(first, minlength=6) > 0).all()


def test_large_seeds_cluster_seed_42_after_20_reclusterings():
    """The candidate hash takes any seed (it once overflowed int64 from seed 7 on: seed 42, or 13 re-clusterings)."""
    features, ids = torch.randn(300, 8, generator=torch.Generator().manual_seed(0)), torch.arange(300)
    starts = [initial_centroids(features, ids, 5, seed, num_candidates=50) for seed in range(42, 42 + 21)]
    assert all(start.shape == (5, 8) and torch.isfinite(start).all() for start in starts)
    assert len({tuple(start[0].tolist()) for start in starts}) > 10  # the seed still chooses the candidates
    centroids, assignment, inertia = kmeans_torch(features, ids, 5, seed=42 + 20, iterations=3)
    again = kmeans_torch(features, ids, 5, seed=42 + 20, iterations=3)
    assert torch.equal(centroids, again[0]) and torch.equal(assignment, again[1]) and inertia > 0
    faiss_centroids, _, _ = kmeans_faiss(features.numpy(), 5, seed=2**40, iterations=3, use_gpu=False)
    assert faiss_centroids.shape == (5, 8)


def test_faiss_fits_on_a_bounded_sample_chosen_by_id():
    """The faiss backend sends rank 0 about k x 256 rows, not the catalog: a sample chosen by id hash, so split
    over ranks it is the same sample; below the limit every row is used."""
    from stellar_dist.clustering.cluster import bounded_sample

    ids = torch.randperm(100_000, generator=torch.Generator().manual_seed(0))
    mask = bounded_sample(ids, 5_000, seed=3)
    assert 4_700 < int(mask.sum()) < 5_300
    chosen = set(ids[mask].tolist())
    assert chosen == set(ids[bounded_sample(ids.flip(0), 5_000, seed=3).flip(0)].tolist())  # order-free
    assert chosen != set(ids[bounded_sample(ids, 5_000, seed=4)].tolist())  # the seed picks another sample
    assert bool(bounded_sample(ids[:1_000], 5_000, seed=3).all())


def test_stream_filter_hash_equals_the_tensor_hash_and_bounds_the_sample():
    """Pass 1 of a large clustering skips samples before decoding them by a Python hash of their id: it must pick
    exactly the rows the tensor hash picks (int64 wrap-around included), and keep about the limit."""
    from stellar_dist.clustering.cluster import id_hash, id_hash_int
    from stellar_dist.clustering.features import plan_selection

    ids = torch.cat([torch.arange(2000), torch.tensor([2**40 + 7, 2**62 - 1, 123456789012])])
    for seed in (0, 7, 42, 10**6):
        assert id_hash(ids, seed).tolist() == [id_hash_int(value, seed) for value in ids.tolist()]
    counts = {"labeled": 1_000, "unlabeled": 99_000, "test": 20_000}
    selection = plan_selection({"num_samples": counts}, seed=3, fit_limit=5_000, probe_limit=500)
    assert not selection.complete
    everything = torch.arange(120_000)
    fit = selection.fit_mask(everything[:100_000], "unlabeled")
    assert 4_700 < int(fit.sum()) < 5_300
    test_kept = id_hash(everything[100_000:], 3) < selection.keep_threshold("test")
    assert 400 < int(test_kept.sum()) < 600
    assert plan_selection({"num_samples": counts}, seed=3).complete  # the default limits keep all 120,000


def test_the_cluster_grid_stretches_every_tile_alike():
    """One asinh stretch for all tiles: a faint tile stays fainter than a bright one (a per-tile stretch would
    make both fill the range), colours keep their ratios, values in [0, 1]."""
    import numpy as np

    from stellar_dist.clustering.cluster_report import shared_stretch

    rng = np.random.default_rng(0)
    bright = np.clip(rng.normal(120, 30, (16, 16, 3)), 0, 255).astype(np.float32)
    faint = np.clip(rng.normal(20, 5, (16, 16, 3)), 0, 255).astype(np.float32)
    faint[..., 0] *= 1.5  # a red object
    stretch = shared_stretch([bright, faint])
    out_bright, out_faint = stretch(bright), stretch(faint)
    assert 0 <= out_faint.min() and out_bright.max() <= 1
    assert out_faint.mean() < 0.5 * out_bright.mean()
    assert out_faint[..., 0].mean() > out_faint[..., 2].mean()  # still red
