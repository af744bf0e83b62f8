import pytest
import yaml

from stellar_dist.config import load_config, save_config
from stellar_dist.errors import UserError


def test_yaml_then_overrides_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n  lr: 1e-3\nssl:\n  threshold: 0.8\n")
    config = load_config(path, ["ssl.threshold=0.9", "train.batch_size=8", "resume=auto"])
    assert (config.train.steps, config.train.lr, config.ssl.threshold) == (10, 0.001, 0.9)
    assert config.train.batch_size == 8 and config.resume == "auto"
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("override, message", [
    ("ssl.thresh=0.9", "unknown config key(s) ssl.thresh; valid keys here: ssl.algorithm"),
    ("train.steps=ten", "train.steps must be int"),
    ("ssl.algorithm=mixmatch", "not one of fixmatch, supervised, deepcluster"),
    ("bogus=1", "unknown config key(s) bogus"),
    ("train.steps", "is not KEY=VALUE"),
])
def test_bad_keys_and_values(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_shipped_configs_load():
    for name in ("demo", "sdss"):
        config = load_config(f"configs/{name}.yaml")
        assert config.model.arch
    assert yaml.safe_load(open("configs/demo.yaml"))["data"]["shards"] == "data/sim-shards"
