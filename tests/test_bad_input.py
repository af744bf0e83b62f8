"""Each bad input gets one clear line on stderr, exit status 2, and leaves nothing half-written."""

import shutil

import pandas as pd
import pytest

from conftest import run_cli


def pack_fails(tmp_path, catalog, *extra):
    out = tmp_path / "out"
    result = run_cli("pack", "--catalog", str(catalog), "--out", str(out), "--workers", "1", *extra, check=False)
    assert result.returncode == 2, result.stderr
    # Progress bars share stderr; the error itself is one line, the last.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("pack:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() and not list(tmp_path.glob(".sdtmp-*")), "half-written output left behind"
    return lines[0]


@pytest.fixture
def small_catalog(sim_catalog, tmp_path):
    """A writable copy of the simulated catalog with absolute paths."""
    catalog = pd.read_csv(sim_catalog)
    catalog["image_path"] = [str(sim_catalog.parent / path) for path in catalog["image_path"]]
    return catalog


def test_missing_column(tmp_path, small_catalog):
    small_catalog.drop(columns=["image_path"]).to_csv(tmp_path / "c.csv", index=False)
    assert "has no column 'image_path' of image paths" in pack_fails(tmp_path, tmp_path / "c.csv")


def test_empty_catalog(tmp_path):
    (tmp_path / "c.csv").write_text("")
    assert "is empty" in pack_fails(tmp_path, tmp_path / "c.csv")
    (tmp_path / "h.csv").write_text("image_path,Class\n")
    assert "holds no samples" in pack_fails(tmp_path, tmp_path / "h.csv")


def test_missing_catalog(tmp_path):
    assert "does not exist" in pack_fails(tmp_path, tmp_path / "nope.csv")


def test_class_too_small(tmp_path, small_catalog):
    tiny = pd.concat([small_catalog, small_catalog.head(2).assign(Class="WHITE_DWARF", objid=[1, 2],
                                                                  image_path=lambda f: f["image_path"] + "?")])
    tiny.to_csv(tmp_path / "c.csv", index=False)
    # the benchmark's hidden classes need more rows of a class than a real catalog's split (1 test + 1 labeled)
    assert "class 'WHITE_DWARF' has only 2 sample(s)" in pack_fails(tmp_path, tmp_path / "c.csv",
                                                                    "--labeled-fraction", "0.1")


def test_duplicate_path_and_objid(tmp_path, small_catalog):
    pd.concat([small_catalog, small_catalog.head(1)]).to_csv(tmp_path / "c.csv", index=False)
    assert "duplicate 'image_path'" in pack_fails(tmp_path, tmp_path / "c.csv")
    dup = small_catalog.copy()
    dup.loc[1, "objid"] = dup.loc[0, "objid"]
    dup.to_csv(tmp_path / "d.csv", index=False)
    assert "duplicate 'objid'" in pack_fails(tmp_path, tmp_path / "d.csv")


def test_corrupt_and_missing_images_are_skipped_and_listed(tmp_path, small_catalog):
    import json

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(small_catalog["image_path"][0], "rb").read()[:300])
    bad = small_catalog.copy()
    bad.loc[0, "image_path"], bad.loc[1, "image_path"] = str(corrupt), str(truncated)
    bad.loc[2, "image_path"] = str(tmp_path / "missing.jpg")
    bad.to_csv(tmp_path / "c.csv", index=False)
    line = pack_fails(tmp_path, tmp_path / "c.csv", "--strict")
    assert "3 unreadable image(s) with --strict" in line
    result = run_cli("pack", "--catalog", str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert "skipped 3 unreadable image(s)" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(item["image_path"] for item in manifest["skipped"]) == sorted(
        [str(corrupt), str(truncated), str(tmp_path / "missing.jpg")])
    assert sum(manifest["num_samples"].values()) == len(bad) - 3 == manifest["num_input"] - 3


def test_output_folder_with_shards_is_refused_then_overwritten(tmp_path, sim_shards, sim_catalog):
    out = tmp_path / "out"
    shutil.copytree(sim_shards, out)
    before = (out / "manifest.json").read_text()
    result = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(out), check=False)
    assert result.returncode == 2 and "already holds shards" in result.stderr and "--overwrite" in result.stderr
    assert (out / "manifest.json").read_text() == before
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(out), "--image-size", "16", "--overwrite")
    assert '"image_size": 16' in (out / "manifest.json").read_text()
    assert not list(tmp_path.glob(".out.*"))


def test_bad_fractions(tmp_path, small_catalog):
    small_catalog.to_csv(tmp_path / "c.csv", index=False)
    assert "sum to at most 1" in pack_fails(tmp_path, tmp_path / "c.csv", "--labeled-fraction", "0.6",
                                              "--test-fraction", "0.5")


def train_without(tmp_path, shards, missing: tuple[str, ...], *overrides):
    """launch/train.py in a process where the `missing` packages cannot be imported (sys.modules[name] = None is
    Python's own way to make an import fail: what a machine without the wheel sees)."""
    from conftest import REPO_ROOT, TINY, Warm

    script = str(REPO_ROOT / "launch" / "train.py")
    return Warm.run([script, *TINY, f"data.shards={shards}", *overrides], path=script, hide=missing)


def test_missing_wandb_or_faiss_or_gpu_is_refused_in_one_line_or_falls_back(sim_shards, tmp_path):
    import torch

    cases = [(("wandb",), ["tracking=wandb"], "wandb is not installed"),
             (("faiss",), ["cluster.backend=faiss"], "faiss is not installed")]
    if not torch.cuda.is_available():
        cases.append(((), ["train.mixed_precision=fp16"], "fp16 needs a GPU"))
    cases.append(((), ["model.centre_crop=64"], "larger than the 32 px images"))
    for index, (missing, overrides, words) in enumerate(cases):
        out = tmp_path / f"case{index}"
        result = train_without(tmp_path, sim_shards, missing, f"output_dir={out}", *overrides)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr[-2000:]
        assert not out.exists()  # refused before anything was written
    out = tmp_path / "auto"  # the default backend clusters with torch k-means where faiss is absent
    result = train_without(tmp_path, sim_shards, ("faiss", "wandb"), f"output_dir={out}", "tracking=none",
                           "ssl.algorithm=deepcluster", "cluster.k=6", "cluster.pca_dim=8", "train.steps=3")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    assert json.loads((out / "metrics.json").read_text())["cluster"]["k"] == 6
