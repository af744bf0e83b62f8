"""The photometric numbers (data/photometry.py) and the network's photometric branch (model.photometry)."""

import torch

from stellar_dist.data.photometry import feature_names, measure
from stellar_dist.model.network import build_model


def _source(size: int, sigma: float, colour: tuple[float, float, float], sky: float = 0.1) -> torch.Tensor:
    """A Gaussian source of width `sigma` px and band amplitudes `colour` on a flat sky, C x S x S in [0, 1]."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return sky + torch.tensor(colour)[:, None, None] * profile


def test_the_numbers_tell_point_from_extended_and_blue_from_red():
    names = feature_names(3)
    images = torch.stack([_source(64, 1.5, (0.5, 0.5, 0.5)), _source(64, 6.0, (0.5, 0.5, 0.5)),
                          _source(64, 1.5, (0.2, 0.5, 0.8)), _source(64, 1.5, (0.8, 0.5, 0.2))])
    numbers = measure(images)
    value = {name: numbers[:, index] for index, name in enumerate(names)}
    assert numbers.shape == (4, len(names)) and torch.isfinite(numbers).all()
    assert value["half_light_radius"][1] > 2 * value["half_light_radius"][0]  # extended vs point-like
    assert value["concentration_b0"][0] > value["concentration_b0"][1]
    assert value["size"][1] > 2 * value["size"][0]
    # band 0 minus band 1 in asinh magnitudes: fainter in band 0 is a negative colour
    assert value["colour_b0-b1_r2"][2] < 0 < value["colour_b0-b1_r2"][3]
    assert abs(value["colour_b0-b1_r2"][0]) < 1e-4  # a grey source has no colour, whatever the sky level
    assert value["elongation"][0] < 0.05


def test_one_by_one_equals_the_batch_and_the_network_measures_its_whole_input():
    images = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    batch = measure(images)
    single = torch.cat([measure(image[None]) for image in images])
    assert torch.allclose(batch, single, atol=1e-5)
    assert torch.equal(measure(images.to(memory_format=torch.channels_last)), batch)  # the run's layout
    model = build_model("resnet18", 3, photometry=True, centre_crop=24).eval()
    assert model.feature_dim == 512 + 256
    with torch.no_grad():
        features = model.features(images)
        changed = images.clone()
        changed[:, :, :2, :2] = 1.0  # outside the CNN's centre crop: only the photometric branch sees it
        moved = model.features(changed)
    assert features.shape == (5, 768)
    assert torch.equal(features[:, :512], moved[:, :512]) and not torch.equal(features[:, 512:], moved[:, 512:])


def test_the_numbers_stay_float32_under_autocast():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = measure(images)
    assert inside.dtype == torch.float32 and torch.equal(inside, measure(images))


def test_branch_dropout_zeroes_whole_samples_in_training_only():
    model = build_model("resnet18", 3, photometry=True, photometry_dropout=0.5)
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    with torch.no_grad():
        trained = model.train().photometry(images)
        evaluated = model.eval().photometry(images)
    dropped = trained.abs().sum(dim=1) == 0
    assert 10 < int(dropped.sum()) < 54 and (trained[~dropped] != 0).any(dim=1).all()
    assert (evaluated.abs().sum(dim=1) > 0).all()
