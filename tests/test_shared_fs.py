"""A shared, full or hostile filesystem, tried as an unlucky or hostile user would: planted links at lock and output
paths, a FIFO where an image should be, a compressed FITS bomb, kill -9 mid-write, a model republished at the same
path, a half-written index, a resume onto other images, FITS bands named differently from the model's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT, copied_catalog, one_line_error, run_cli, train
from stellar_dist.core import files
from stellar_dist.data import bands


def small_catalog(sim_catalog, folder: Path, rows: int = 30) -> Path:
    catalog = pd.read_csv(sim_catalog).head(rows)
    catalog["image_path"] = [str(sim_catalog.parent / path) for path in catalog["image_path"]]
    catalog.to_csv(folder / "c.csv", index=False)
    return folder / "c.csv"


def test_a_planted_link_or_hard_link_at_a_lock_is_refused_and_its_target_kept(plain_run, sim_catalog, tmp_path):
    catalog = small_catalog(sim_catalog, tmp_path)
    victim = tmp_path / "victim.csv"
    victim.write_text("someone else's results\n" * 100)
    before = victim.read_bytes()
    for plant in (os.symlink, os.link):
        lock = tmp_path / ".out.csv.lock"
        plant(victim, lock)
        line = one_line_error(run_cli("predict", "--model", str(plain_run), "--input", str(catalog), "--out",
                                      str(tmp_path / "out.csv"), check=False))
        assert "not a lock file of stellar-dist's" in line and victim.read_bytes() == before
        assert not (tmp_path / "out.csv").exists()
        lock.unlink()
    # A planted link at an output's final name is replaced by the output, never written through.
    (tmp_path / "parts").mkdir()
    os.symlink(victim, tmp_path / "parts" / "_index.json")
    run_cli("predict", "--model", str(plain_run), "--input", str(catalog), "--out", f"{tmp_path / 'parts'}/")
    assert victim.read_bytes() == before and not (tmp_path / "parts" / "_index.json").is_symlink()
    assert json.loads((tmp_path / "parts" / "_index.json").read_text())["complete"] is True


def test_temporary_files_are_private_swept_only_when_their_maker_is_dead(tmp_path):
    live = files.private_folder(tmp_path, "out.csv")
    assert oct(live.stat().st_mode & 0o777) == "0o700" and live.name.startswith(".sdtmp-out.csv-")
    dead = tmp_path / ".sdtmp-old-abc"
    dead.mkdir()
    (dead / ".alive").write_text("")  # nobody holds its lock: a killed maker
    (dead / "big.npy").write_bytes(b"0" * 1000)
    user = tmp_path / ".sdtmp-looks-like-ours"
    user.symlink_to(tmp_path / "elsewhere")  # a link is never followed nor removed
    assert files.sweep(tmp_path) == [dead.name]
    assert live.is_dir() and user.is_symlink()
    files.discard_private(live)
    assert not live.exists()


def test_reads_refuse_fifos_and_bound_json(tmp_path):
    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        files.open_regular(fifo)  # returns at once: nothing waits for a writer
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep"):
        files.read_json(deep)
    with pytest.raises(ValueError, match="limit"):
        files.read_json(deep, max_bytes=1000)


def test_a_fifo_among_the_images_is_rejected_not_waited_on(plain_run, sim_catalog, tmp_path):
    catalog = pd.read_csv(small_catalog(sim_catalog, tmp_path))
    os.mkfifo(tmp_path / "pipe.jpg")
    catalog.loc[3, "image_path"] = str(tmp_path / "pipe.jpg")
    catalog.to_csv(tmp_path / "c.csv", index=False)
    result = subprocess.run([sys.executable, "-m", "stellar_dist", "predict", "--model", str(plain_run),
                             "--input", str(tmp_path / "c.csv"), "--out", str(tmp_path / "p.csv")],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = pd.read_csv(tmp_path / "p.csv")
    rejected = out[out["rejected_reason"].notna()]
    assert list(rejected["row"]) == [3] and "FIFO" in rejected["rejected_reason"].iloc[0]
    line = one_line_error(subprocess.run([sys.executable, "-m", "stellar_dist", "pack", "--catalog",
                                          str(tmp_path / "pipe.jpg"), "--out", str(tmp_path / "s")],
                                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=300))
    assert "FIFO" in line and not (tmp_path / "s").exists()


def test_fits_shapes_are_checked_from_the_header_before_any_pixel_is_read(tmp_path):
    from astropy.io import fits

    # A header claiming 5 x 12000 x 12000 float32 pixels (2.9 GB) and no data at all: refused from the header.
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": 12000, "NAXIS2": 12000, "NAXIS3": 5})
    (tmp_path / "bomb.fits").write_bytes(header.tostring().encode())
    with pytest.raises(ValueError, match="pixel cap"):
        bands.read_cutout(str(tmp_path / "bomb.fits"), ("u", "g", "r", "i", "z"))
    # A real tile-compressed file of 9000 x 9000 zeros: a few kB on disk, refused before decompression.
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((9000, 9000), np.int16), name="R")]).writeto(
        tmp_path / "zeros.fits.fz")
    assert (tmp_path / "zeros.fits.fz").stat().st_size < 2_000_000
    with pytest.raises(ValueError, match="pixel cap"):
        bands.read_cutout(str(tmp_path / "zeros.fits.fz"), ("r",))
    fits.PrimaryHDU(np.zeros((4, 400), np.float32)).writeto(tmp_path / "strip.fits")
    with pytest.raises(ValueError, match="aspect"):
        bands.read_cutout(str(tmp_path / "strip.fits"), ("band0",))


def test_named_bands_are_matched_by_name_never_by_position(tmp_path):
    from astropy.io import fits

    planes = {name: np.full((16, 16), value, np.float32) for value, name in enumerate("GRIZY")}
    fits.HDUList([fits.PrimaryHDU(), *(fits.ImageHDU(plane, name=name) for name, plane in planes.items())]).writeto(
        tmp_path / "shifted.fits")
    with pytest.raises(ValueError, match="names its bands G,R,I,Z,Y, not u,g,r,i,z"):
        bands.read_cutout(str(tmp_path / "shifted.fits"), ("u", "g", "r", "i", "z"))
    cube = bands.read_cutout(str(tmp_path / "shifted.fits"), ("z", "g"))  # by name, in the model's order
    assert cube[0, 0, 0] == 3 and cube[1, 0, 0] == 0
    fits.HDUList([fits.PrimaryHDU(plane) if index == 0 else fits.ImageHDU(plane)
                  for index, plane in enumerate(planes.values())]).writeto(tmp_path / "unnamed.fits")
    assert bands.read_cutout(str(tmp_path / "unnamed.fits"), ("u", "g", "r", "i", "z"))[4, 0, 0] == 4


def test_parts_refuse_a_model_republished_at_the_same_path_and_survive_a_torn_index(plain_run, trained_run,
                                                                                     sim_catalog, tmp_path):
    catalog = small_catalog(sim_catalog, tmp_path, rows=40)
    model = tmp_path / "model"
    shutil.copytree(plain_run / "model", model)
    parts = tmp_path / "parts"
    command = ["predict", "--model", str(model), "--input", str(catalog), "--out", f"{parts}/", "--part-rows", "20"]
    run_cli(*command)
    (parts / "part-000001.parquet").unlink()  # as if killed before its last part
    shutil.copyfile(trained_run[0] / "model" / "model.safetensors", model / "model.safetensors")
    shutil.copyfile(trained_run[0] / "model" / "config.json", model / "config.json")
    line = one_line_error(run_cli(*command, check=False))
    assert "weights changed" in line and sorted(path.name for path in parts.iterdir()) == [
        "_index.json", "part-000000.parquet"]
    # A zero-byte index (an older version on a full disk) with parts: one line, not a traceback; without parts
    # the folder is simply claimed again.
    (parts / "_index.json").write_text("")
    assert "without a readable _index.json" in one_line_error(run_cli(*command, check=False))
    (parts / "part-000000.parquet").unlink()
    run_cli(*command)
    assert json.loads((parts / "_index.json").read_text())["complete"] is True


def test_kill_9_leftovers_are_removed_by_the_next_run_and_said_so(sim_catalog, tmp_path):
    copied_catalog(sim_catalog, tmp_path, 10)  # 2,000 images: seconds of packing
    process = subprocess.Popen([sys.executable, "-m", "stellar_dist", "pack", "--catalog", str(tmp_path / "c.csv"),
                                "--out", str(tmp_path / "out"), "--workers", "1", "--shard-size", "50"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".sdtmp-out-*/*.tar")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the pack and its workers: nothing runs a clean-up
    process.communicate(timeout=60)
    assert list(tmp_path.glob(".sdtmp-out-*/*.tar")), "the kill came too late to leave anything"
    small_catalog(sim_catalog, tmp_path, rows=40)
    result = run_cli("pack", "--catalog", str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"),
                     "--labeled-fraction", "0.2", "--workers", "1")
    assert "removed 1 leftover(s) of killed stellar-dist commands" in result.stdout
    assert not list(tmp_path.glob(".sdtmp-*")) and (tmp_path / "out" / "manifest.json").is_file()


def test_a_refused_resume_changes_nothing_and_names_the_change(plain_run, sim_catalog, sim_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    other = tmp_path / "shards48"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(other), "--labeled-fraction", "0.2",
            "--test-fraction", "0.2", "--image-size", "48", "--workers", "2")
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "log.jsonl", "metrics.json")}
    from conftest import PLAIN_RUN

    line = one_line_error(train(f"data.shards={other}", f"output_dir={run}", "resume=auto", "train.steps=8",
                                *PLAIN_RUN, check=False))
    assert "image_size 32 -> 48" in line and "nothing was changed" in line
    line = one_line_error(train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", "train.steps=8",
                                "cluster.at_end=false", check=False))  # the same shards, but no photometric branch: other weights
    assert "model.photometry=True" in line and "cannot continue" in line
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_full_disk_leaves_a_usable_folder(plain_run, sim_catalog, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("no tmpfs can be mounted here")
    try:
        catalog = small_catalog(sim_catalog, tmp_path, rows=60)
        command = ["predict", "--model", str(plain_run), "--input", str(catalog), "--out", f"{disk / 'p'}/",
                   "--part-rows", "5"]
        (disk / "filler").write_bytes(b"0" * 1_000_000)
        line = one_line_error(run_cli(*command, check=False))
        assert "space" in line.lower()
        (disk / "filler").unlink()
        run_cli(*command)  # the same command again, as the error advises: it finishes the folder
        assert json.loads((disk / "p" / "_index.json").read_text())["complete"] is True
        assert not [path for path in (disk / "p").iterdir() if path.name.startswith(".sdtmp-")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
