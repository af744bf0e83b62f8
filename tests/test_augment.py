"""What each strong view keeps of the evidence: the target's flux at the centre and its colour."""

import torch

from stellar_dist.data import augment


def point_source(size: int = 32) -> torch.Tensor:
    """A centred blue point source (g brighter than r and i) on a faint sky."""
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 1.5**2))
    return 0.02 + torch.stack([0.5 * profile, 0.9 * profile, 0.45 * profile])  # RGB = i, r, g


def evidence_kept(kind: str, views: int = 300) -> tuple[float, float]:
    """(share of views with more than half the source's flux erased, share whose colour g/r moved by > 10%)."""
    image, erased, recoloured = point_source(), 0, 0
    box = slice(9, 23)  # the weak view shifts by up to 4 px: a box that holds the source wherever it went

    def source_flux(picture):  # per band, above the sky level (median of the picture)
        return (picture[:, box, box] - picture.flatten(1).median(1).values[:, None, None]).sum(dim=(1, 2))

    flux = source_flux(image)
    for seed in range(views):
        view = augment.strong(image, torch.Generator().manual_seed(seed), kind=kind)
        scale = view.flatten(1).median(1).values.mean() / 0.02  # a flux scale is no loss: compare at equal scale
        kept = source_flux(view) / scale.clamp(min=1e-3)
        erased += int(kept.sum() < 0.5 * flux.sum())
        recoloured += int(abs((kept[2] / kept[1]) / (flux[2] / flux[1]) - 1) > 0.10) if kept[1] > 0 else 1
    return erased / views, recoloured / views


def test_cutout_off_centre_never_touches_the_centre():
    image, cut = torch.ones(3, 32, 32), 0
    for seed in range(300):
        view = augment.cutout_off_centre(image, torch.Generator().manual_seed(seed))
        assert torch.all(view[:, 12:20, 12:20] == 1)
        cut += int((view == 0).any())
    assert cut > 250  # and it still cuts nearly every time


def test_the_evidence_view_keeps_flux_and_colour_where_the_sky_view_does_not():
    sky_erased, sky_recoloured = evidence_kept("sky")
    evidence_erased, evidence_recoloured = evidence_kept("evidence")
    # measured over 1,000 views: sky 16% erased / 40% recoloured; evidence 1% / 2% (the 1%: sky-level estimates)
    assert sky_erased > 0.08 and sky_recoloured > 0.2  # the FixMatch-style view destroys the evidence in many views
    assert evidence_erased < 0.03 and evidence_recoloured < 0.06


def test_views_are_reproducible_from_the_seed():
    image = point_source()
    for kind in ("sky", "evidence"):
        first, again = (augment.strong(image, torch.Generator().manual_seed(7), kind=kind) for _ in range(2))
        assert torch.equal(first, again)


def test_device_views_come_from_each_sample_seed_alone():
    """The batched path (data.augment_on=device): the same seeds give the same views, a sample's views do not
    depend on the rest of its batch, different seeds differ, and every view is a valid [0, 1] image."""
    from stellar_dist.data.batch_augment import make_views

    images = (torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    seeds = torch.arange(12) * 7919 + 5
    views = make_views(images, seeds, ("weak", "strong"))
    again = make_views(images, seeds, ("weak", "strong"))
    alone = make_views(images[4:5], seeds[4:5], ("weak", "strong"))
    for name in ("weak", "strong"):
        assert views[name].shape == (12, 3, 32, 32) and views[name].dtype == torch.float32
        assert torch.equal(views[name], again[name])
        assert torch.allclose(views[name][4], alone[name][0], atol=1e-6)
        assert 0 <= views[name].min() and views[name].max() <= 1
    other = make_views(images, seeds + 1, ("weak", "strong"))
    assert not torch.equal(views["strong"], other["strong"]) and not torch.equal(views["weak"], views["strong"])
    # the weak view only moves pixels (flips, turns, reflect-padded shifts): every value comes from the image
    assert set(views["weak"][0].flatten().tolist()) <= set((images[0].float() / 255).flatten().tolist())


def test_both_view_makers_draw_the_same_distribution_of_parameters():
    """One table of ops and ranges (augment.PARAMETERS / STRONG_OPS) makes both paths: for the same seeds, the
    per-sample path (workers) and the batched path (device) choose each op equally often and draw each op's
    parameter and Cutout's size from the same distribution (two-sample Kolmogorov-Smirnov), for both strong
    views."""
    from scipy.stats import ks_2samp

    from stellar_dist.data import batch_augment

    count, image = 1500, torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    seeds = torch.arange(count) * 7919 + 11
    for kind in ("sky", "evidence"):
        per_sample: dict[str, list] = {}
        for seed in seeds.tolist():
            trace: list = []
            augment.strong(image, torch.Generator().manual_seed(seed), kind=kind, trace=trace)
            for name, value in trace:
                per_sample.setdefault(name, []).append(value)
        batched: dict = {}
        batch_augment.strong(image.expand(count, -1, -1, -1).contiguous(), seeds, kind=kind, trace=batched)
        assert set(per_sample) == set(batched) == {*augment.STRONG_OPS[kind, False], "cutout"}, kind
        ops = augment.STRONG_OPS[kind, False]
        for name in ops:  # each op is one of 2 drawn from len(ops): chosen with probability 2 / len(ops)
            expected = count * 2 / len(ops)
            for drawn in (len(per_sample[name]), len(batched[name])):
                assert abs(drawn - expected) < 5 * (expected * (1 - 2 / len(ops))) ** 0.5, (kind, name, drawn)
        for name, values in per_sample.items():
            low, high = augment.PARAMETERS.get(name, augment.CUTOUT_FRACTION)
            other = batched[name].tolist()
            assert low <= min(values + other) and max(values + other) <= high, (kind, name)
            assert ks_2samp(values, other).pvalue > 1e-3, (kind, name)


def test_device_path_makes_the_evidence_view():
    """data.strong_view=evidence on the device: Cutout never touches the central box, as in the workers."""
    from stellar_dist.data.batch_augment import make_views

    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    views = make_views(images, torch.arange(64) * 31 + 3, ("strong",), kind="evidence")["strong"]
    centre = views[:, :, 12:20, 12:20]
    assert torch.all(centre > 0)  # rotation, noise and brightness only dim it; nothing blanks it
    assert (views == 0).flatten(1).any(1).float().mean() > 0.5  # Cutout blanked a square elsewhere in most


def test_no_shift_keeps_the_object_centred_on_both_paths():
    """data.max_shift_fraction=0: every weak view is a flip / quarter turn of the image (the photometric branch's
    apertures stay on the object); with the default, the batched views do move it."""
    from stellar_dist.data import batch_augment

    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    dihedral = [torch.rot90(flipped, turns, dims=(-2, -1)) for flipped in (image, image.flip(-1))
                for turns in range(4)]
    for seed in range(20):
        view = augment.weak(image, torch.Generator().manual_seed(seed), max_shift_fraction=0)
        assert any(torch.equal(view, candidate) for candidate in dihedral)
    batch = (image[None].repeat(20, 1, 1, 1) * 255).round().to(torch.uint8)
    seeds = torch.arange(20)
    still = batch_augment.make_views(batch, seeds, ("weak", "strong"), max_shift_fraction=0)["weak"]
    reference = [(candidate * 255).round() / 255 for candidate in dihedral]
    assert all(any(torch.allclose(view, candidate) for candidate in reference) for view in still)
    moved = batch_augment.make_views(batch, seeds, ("weak",))["weak"]
    assert not all(any(torch.allclose(view, candidate) for candidate in reference) for view in moved)
