import json

import pytest
import torch

from stellar_dist.data.streams import ItemMaker, OnceStream, TrainStream, make_loader, shard_paths


def ids_of(loader, num_batches=None):
    ids = []
    for index, batch in enumerate(loader):
        if num_batches is not None and index == num_batches:
            break
        ids.extend(batch["id"].tolist())
    return ids


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_stream_each_sample_once_across_ranks(sim_shards, num_workers):
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    paths = shard_paths(sim_shards, "test")
    for shards in (paths, paths[:1]):  # enough shards for every reader, and fewer shards than readers
        seen = []
        for rank in range(2):
            stream = OnceStream(shards, ItemMaker("plain", "png"), 5, rank=rank, world_size=2)
            seen.append(ids_of(make_loader(stream, num_workers)))
        assert not set(seen[0]) & set(seen[1])
        expected = sum(entry["num_samples"] for entry in manifest["shards"]["test"] if str(sim_shards / entry["name"]) in shards)
        assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) == expected


def test_train_stream_differs_by_rank_and_repeats_by_seed(sim_shards):
    paths = shard_paths(sim_shards, "unlabeled")
    def stream(rank, seed=0, start=0):
        return TrainStream(paths, ItemMaker("unlabeled", "png"), 6, seed=seed, rank=rank, stream="unlabeled",
                           shuffle_buffer=16, start_batch=start)
    rank0, rank1 = ids_of(make_loader(stream(0), 0), 8), ids_of(make_loader(stream(1), 0), 8)
    assert rank0 != rank1 and len(rank0) == 48
    assert rank0 == ids_of(make_loader(stream(0), 0), 8)
    batch = next(iter(make_loader(stream(0), 0)))
    assert batch["weak"].shape == batch["strong"].shape == (6, 3, 32, 32)
    assert not torch.equal(batch["weak"], batch["strong"])
    assert (batch["label"] == -1).all() and (batch["true_label"] >= 0).all()


def test_train_stream_resumes_exactly_with_workers(sim_shards):
    paths = shard_paths(sim_shards, "labeled")
    def loader(start):
        stream = TrainStream(paths, ItemMaker("labeled", "png"), 4, seed=3, rank=0, stream="labeled",
                             shuffle_buffer=8, start_batch=start)
        return iter(make_loader(stream, 2))
    full_iter = loader(0)
    full = [next(full_iter) for _ in range(7)]
    resumed_iter = loader(3)
    for expected in full[3:]:
        got = next(resumed_iter)
        assert torch.equal(got["id"], expected["id"]) and torch.equal(got["image"], expected["image"])


def test_train_streams_split_shards_by_rank_when_there_are_enough(sim_shards):
    paths = shard_paths(sim_shards, "unlabeled")
    assert len(paths) == 3
    def seen(rank, world_size):
        stream = TrainStream(paths, ItemMaker("labeled", "png"), 8, seed=0, rank=rank, stream="unlabeled",
                             world_size=world_size, shuffle_buffer=4)
        return set(ids_of(make_loader(stream, 0), 30))
    rank0, rank1 = seen(0, 2), seen(1, 2)
    assert rank0 and rank1 and not rank0 & rank1  # 3 shards >= 2 readers: disjoint subsets
    assert len(rank0 | rank1) == 120  # and together they cover the split
    crowded = [seen(rank, 4) for rank in range(4)]  # 3 shards < 4 readers: everyone resamples everything
    assert all(len(ids) > 40 for ids in crowded)


def test_class_balanced_labeled_stream_and_only_the_declared_views(sim_shards):
    from stellar_dist.training.batches import balanced_acceptance
    from stellar_dist.data.manifest import load_manifest

    manifest = load_manifest(sim_shards)
    counts = [manifest["counts"]["labeled"][name] for name in manifest["classes"]]
    accept = balanced_acceptance(manifest)
    assert min(counts) < max(counts) and max(accept) == 1.0
    paths = shard_paths(sim_shards, "labeled")

    def labels(accept, start=0, batches=60):
        stream = TrainStream(paths, ItemMaker("labeled", "png"), 4, seed=1, rank=0, stream="labeled",
                             shuffle_buffer=8, start_batch=start, accept=accept)
        return torch.cat([batch["label"] for _, batch in zip(range(batches), make_loader(stream, 0))])

    plain, balanced = labels(None), labels(accept)
    share = lambda values: torch.bincount(values, minlength=3).float() / len(values)  # noqa: E731
    assert (share(balanced).max() - share(balanced).min()) < 0.5 * (share(plain).max() - share(plain).min())
    assert torch.equal(labels(accept, start=10, batches=50), balanced[40:])  # resume rejects the same samples
    views = ItemMaker("unlabeled", "png", views=("weak0", "weak1"))
    batch = next(iter(make_loader(TrainStream(shard_paths(sim_shards, "unlabeled"), views, 2, seed=0, rank=0,
                                              stream="unlabeled"), 0)))
    assert {"weak0", "weak1"} <= set(batch) and "strong" not in batch and "weak" not in batch


def test_objids_travel_with_the_batches_and_match_the_records(sim_shards, tmp_path):
    """Integer objids ride in the evaluation batches (the end-of-run tables then read no shard); shards whose ids
    are text (or older shards) fall back to reading the records: the same texts either way."""
    import shutil

    from stellar_dist.data.eval_data import objid_texts, objids
    from stellar_dist.data.objids import MISSING_OBJID

    manifest = json.loads((sim_shards / "manifest.json").read_text())
    assert manifest["objid_type"] == "int64"
    stream = OnceStream(shard_paths(sim_shards, "test"), ItemMaker.for_shards("plain", manifest), 16, rank=0,
                        world_size=1)
    batches = list(make_loader(stream, 0))
    ids, values = torch.cat([b["id"] for b in batches]), torch.cat([b["objid"] for b in batches])
    assert values.dtype == torch.int64 and bool((values != MISSING_OBJID).all())
    from_records = objids(str(sim_shards), ("test",))
    assert objid_texts(values, str(sim_shards), ("test",), ids) == [str(from_records[i]) for i in ids.tolist()]
    text = tmp_path / "text"
    shutil.copytree(sim_shards, text)
    (text / "manifest.json").write_text(json.dumps(manifest | {"objid_type": "string"}))
    assert objid_texts(None, str(text), ("test",), ids) == objid_texts(values, str(sim_shards), ("test",), ids)
