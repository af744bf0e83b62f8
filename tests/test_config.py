import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from stellar_dist.training.config import load_config, save_config
from stellar_dist.core.errors import UserError


def test_yaml_then_overrides_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n  lr: 1e-3\n  mixed_precision: no\nssl:\n  threshold: 0.8\n")
    config = load_config(path, ["ssl.threshold=0.9", "train.batch_size=8", "resume=auto"])
    assert (config.train.steps, config.train.lr, config.ssl.threshold) == (10, 0.001, 0.9)
    assert config.train.mixed_precision == "no"  # YAML 1.1 reads a bare no as False
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert config.train.batch_size == 8 and config.resume == "auto"
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("override, message", [
    ("ssl.thresh=0.9", "unknown config key(s) ssl.thresh; valid keys here: ssl.algorithm"),
    ("train.steps=ten", "train.steps must be int"),
    ("ssl.algorithm=meanteacher", "not one of supervised, pseudolabel, mixmatch, fixmatch, flexmatch, freematch"),
    ("ssl.mixmatch.views=0", "ssl.mixmatch.views=0 is out of range"),
    ("ssl.flexmatch.warmup=3", "ssl.flexmatch.warmup must be bool"),
    ("train.mixed_precision=yes", "not one of auto, no, bf16, fp16"),
    ("output_dir=no", "output_dir must be str, got False"),  # a path is never read as the word no
    ("bogus=1", "unknown config key(s) bogus"),
    ("train.steps", "is not KEY=VALUE"),
    ("train.batch_size=0", "train.batch_size=0 is out of range: it must lie in [1, 65536]"),
    ("train.steps=-1", "train.steps=-1 is out of range"),
    ("ssl.threshold=1.5", "ssl.threshold=1.5 is out of range: it must lie in (0, 1)"),
    ("train.lr=nan", "train.lr=nan is out of range"),
    ("train.ema_decay=1", "train.ema_decay=1.0 is out of range"),
    ("eval.every_steps=-1", "eval.every_steps=-1 is out of range"),
    ("data.num_workers=-2", "data.num_workers=-2 is out of range"),
    ("seed=-1", "seed=-1 is out of range"),
    ("cluster.k=1", "cluster.k=1 makes one cluster"),
    ("cluster.k=500 cluster.fit_samples=200", "raise cluster.fit_samples or lower k"),
    ("cluster.lambda_c=0.3 ssl.algorithm=supervised", "ssl.algorithm=supervised has none"),
])
def test_bad_keys_and_values(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, override.split())


def test_alignment_is_off_where_nothing_is_pseudo_labelled():
    """The best recipe's file (fixmatch + alignment) runs the supervised baseline unchanged; its saved config
    says what ran."""
    assert load_config(None, ["ssl.algorithm=supervised", "ssl.distribution_alignment=true"]).ssl \
        .distribution_alignment is False
    assert load_config(None, ["ssl.algorithm=fixmatch", "ssl.distribution_alignment=true"]).ssl \
        .distribution_alignment is True


def test_every_numeric_key_has_a_range():
    """Core keys in config.RANGES; each algorithm's own keys (ssl.<name>.*) in its Options.RANGES."""
    from stellar_dist.algorithms import ALGORITHMS
    from stellar_dist.training.config import RANGES, Config

    def numeric_keys(cls, prefix=""):
        for name, kind in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(kind):
                yield from numeric_keys(kind, f"{prefix}{name}.")
            elif kind in (int, float):
                yield prefix + name

    assert set(numeric_keys(Config)) == set(RANGES)
    for name, algorithm in ALGORITHMS.items():
        if algorithm.Options is not None:
            assert set(numeric_keys(algorithm.Options)) == set(algorithm.Options.RANGES), name


def test_shipped_configs_load():
    for name in ("demo", "sdss"):
        config = load_config(f"configs/{name}.yaml")
        assert config.model.arch
    assert yaml.safe_load(open("configs/demo.yaml"))["data"]["shards"] == "data/sim-shards"


def test_command_line_version_fast_help_and_config_command(tmp_path):
    """`--version`; `--help` without importing torch (a fresh interpreter's modules are checked); `config` prints
    the YAML a run would use (it loads back to the same config) and `--keys` every key with its meaning."""
    import subprocess
    import sys

    from stellar_dist import __version__
    from stellar_dist.training.config import config_from_dict, to_dict

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stellar_dist", *args], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])

    assert cli("--version").stdout.strip() == f"stellar-dist {__version__}"
    probe = ("import sys; from stellar_dist.cli import build_parser; parser = build_parser(['pack', '--help']); "
             "print(parser.format_help()); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False") and "config" in result.stdout, result.stdout + result.stderr
    help_text = cli("pack", "--help").stdout
    assert "--image-size IMAGE_SIZE" in help_text and "default 64" in help_text
    printed = cli("config", "--config", "configs/demo.yaml", "train.steps=7", "ssl.algorithm=softmatch")
    tree = yaml.safe_load(printed.stdout)
    assert tree["train"]["steps"] == 7 and tree["ssl"]["softmatch"]["n_sigma"] == 2.0
    assert to_dict(config_from_dict(tree)) == tree
    keys = cli("config", "--keys").stdout.splitlines()
    by_key = {line.split(" = ")[0]: line for line in keys}
    assert "[auto | faiss | torch]" in by_key["cluster.backend"] and "n_sigma" in " ".join(by_key)
    assert "naming the last good checkpoint" in by_key["dist.timeout_s"]  # a comment continued on the next line
    bad = cli("config", "train.stepz=3")
    assert bad.returncode == 2 and "unknown config key" in bad.stderr and "Traceback" not in bad.stderr


def test_sweep_agents_overrides_with_dashes(capsys):
    """W&B sweep agents pass `--train.lr=0.01`: read as the override train.lr=0.01 (train and config)."""
    from stellar_dist.cli import main

    main(["config", "--config", "configs/demo.yaml", "--train.lr=0.01", "ssl.mu=2"])
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["train"]["lr"] == 0.01 and tree["ssl"]["mu"] == 2
