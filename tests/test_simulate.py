from collections import Counter

import numpy as np
import pandas as pd

from stellar_dist.data.simulate import CLASS_FRACTIONS, draw_object
from conftest import run_cli


def test_class_proportions_match_dr16():
    classes = Counter(draw_object(index, seed=11)[0].cls for index in range(6000))
    for name, fraction in CLASS_FRACTIONS.items():
        assert abs(classes[name] / 6000 - fraction) < 0.02, (name, classes)


def test_qso_and_star_differ_by_colour_but_overlap():
    rows = [draw_object(index, seed=5)[0] for index in range(4000)]
    qso = np.array([(row.g_r, row.r_i) for row in rows if row.cls == "QSO"])
    star = np.array([(row.g_r, row.r_i) for row in rows if row.cls == "STAR"])
    # QSOs sit above the stellar locus in r-i at fixed g-r (UV-excess power law), but the loci cross.
    locus_residual_qso = qso[:, 1] - (0.38 * qso[:, 0] - 0.05)
    locus_residual_star = star[star[:, 0] < 1.2][:, 1] - (0.38 * star[star[:, 0] < 1.2][:, 0] - 0.05)
    assert locus_residual_qso.mean() > locus_residual_star.mean() + 0.03
    assert ((qso[:, 0] > 0.2) & (qso[:, 0] < 0.6)).mean() > 0.1  # some QSOs share star colours


def test_same_seed_same_images_whatever_the_worker_count(tmp_path):
    run_cli("simulate", "--out", str(tmp_path / "a"), "--num", "12", "--seed", "7", "--workers", "1")
    run_cli("simulate", "--out", str(tmp_path / "b"), "--num", "12", "--seed", "7", "--workers", "2")
    run_cli("simulate", "--out", str(tmp_path / "c"), "--num", "12", "--seed", "8", "--workers", "2")
    catalog_a = pd.read_csv(tmp_path / "a" / "catalog.csv")
    catalog_b = pd.read_csv(tmp_path / "b" / "catalog.csv")
    pd.testing.assert_frame_equal(catalog_a, catalog_b)
    for path in catalog_a["image_path"]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    catalog_c = pd.read_csv(tmp_path / "c" / "catalog.csv")
    assert not catalog_c["r_mag"].equals(catalog_a["r_mag"])
    assert set(catalog_a.columns) >= {"image_path", "Class", "objid", "r_mag", "redshift"}


def test_simulate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run_cli("simulate", "--out", str(tmp_path), "--num", "2", check=False)
    assert result.returncode == 2
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
