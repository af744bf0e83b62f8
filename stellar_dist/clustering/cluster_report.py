"""Cluster analysis on the main process: Hungarian accuracy, NMI, ARI, cluster x class table, linear probe, grids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

from ..core.files import atomic_path
from ..core.metrics import classification_report
from ..data.streams import picture, read_some
from .cluster import cluster_accuracy, match_clusters
from .features import SPLIT_CODES
from .gathered import GRID_PER_CLUSTER
from .recluster import ClusterState


def cluster_metrics(samples: dict, state: ClusterState, classes: list[str]) -> dict:
    """Scores against the true classes of the labeled + test samples (the clusters were fit without labels)."""
    k = state.centroids.shape[0]
    known = (samples["splits"] != SPLIT_CODES["unlabeled"]) & (samples["labels"] >= 0)
    labels, clusters = samples["labels"][known], samples["assignment"][known]
    table = np.zeros((k, len(classes)), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    mapping = match_clusters(labels, clusters, len(classes), k)
    return {
        "k": k,
        "accuracy": cluster_accuracy(labels, clusters, len(classes), k),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "inertia": state.inertia,
        "cluster_to_class": [classes[index] for index in mapping],
        "cluster_class_table": table.tolist(),
        "cluster_sizes": samples["cluster_sizes"],
        "num_scored": int(known.sum()),
        "classes": list(classes),
    }


def linear_probe(samples: dict, classes: list[str], seed: int) -> dict:
    """Logistic regression on frozen backbone features of the labeled split, scored on the test split."""
    rows = np.searchsorted(samples["ids"], samples["probe_ids"])
    splits, labels, features = samples["splits"][rows], samples["labels"][rows], samples["probe_features"]
    train, test = splits == SPLIT_CODES["labeled"], splits == SPLIT_CODES["test"]
    scaler = StandardScaler().fit(features[train])
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(scaler.transform(features[train]), labels[train])
    return classification_report(labels[test], probe.predict(scaler.transform(features[test])), classes)


def nearest_ids(samples: dict, cluster_ids: list[int], per_cluster: int) -> dict[int, list[int]]:
    """The fit samples nearest each centroid, from every rank's candidates (`samples["nearest"]`)."""
    nearest = samples["nearest"]
    chosen = {}
    for cluster in cluster_ids:
        members = np.flatnonzero(nearest["assignment"] == cluster)
        chosen[cluster] = nearest["ids"][members[np.argsort(nearest["distance"][members], kind="stable")
                                                 [:per_cluster]]].tolist()
    return chosen


def _centre(image: Image.Image) -> np.ndarray:
    """The central half of a cutout (where the target is), as float RGB."""
    width, height = image.size
    box = (width // 4, height // 4, width - width // 4, height - height // 4) if min(width, height) >= 16 else None
    return np.asarray((image.crop(box) if box else image).convert("RGB"), dtype=np.float32)


def shared_stretch(tiles: list[np.ndarray]):
    """One asinh stretch for every tile (Lupton et al. 2004: on the mean intensity, each pixel's colour kept), set
    by all the tiles' intensities together (0.5th to 99.5th percentile): brightness compares across tiles and a
    faint object stays faint instead of its noise being stretched into colour."""
    values = np.concatenate([tile.mean(axis=2).ravel() for tile in tiles]) if tiles else np.zeros(1)
    low, high = np.percentile(values, [0.5, 99.5])
    span = max(float(high - low), 1e-6)
    softening = span / 8  # the asinh's linear range: the faint end stays linear, the bright end is compressed

    def stretch(tile: np.ndarray) -> np.ndarray:
        intensity = np.maximum(tile.mean(axis=2, keepdims=True) - low, 0)
        scaled = np.arcsinh(intensity / softening) / np.arcsinh(span / softening)
        colour = np.where(intensity > 0, tile - low, 0) / np.maximum(intensity, 1e-6)
        return np.clip(scaled * colour, 0, 1)

    return stretch


def _thumbnail(tile: np.ndarray, size: int, stretch) -> Image.Image:
    """A stretched tile enlarged to `size`, so that a faint point source is more than a few pixels."""
    return Image.fromarray((stretch(tile) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)


CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _grid_images(shards_dir: str, manifest: dict, nearest: dict, wanted: set[int]) -> tuple[dict, dict]:
    """The `wanted` samples' images ({id: PIL image}, read from only the shards holding them) and the known class
    of those that have one ({id: class index})."""
    rows = np.flatnonzero(np.isin(nearest["ids"], list(wanted)))
    names = {code: split for split, code in SPLIT_CODES.items()}
    shards: dict[str, set[int]] = {}
    for row in rows:
        shards.setdefault(names[int(nearest["splits"][row])], set()).add(int(nearest["shards"][row]))
    images = {sample_id: Image.fromarray(picture(raw, manifest))
              for sample_id, raw in read_some(shards_dir, shards, wanted).items()}
    known = {int(nearest["ids"][row]): int(nearest["labels"][row]) for row in rows
             if nearest["splits"][row] != SPLIT_CODES["unlabeled"] and nearest["labels"][row] >= 0}
    return images, known


def plot_cluster_grid(shards_dir: str, manifest: dict, samples: dict, state: ClusterState, metrics: dict,
                      path: Path, num_clusters: int, per_cluster: int = GRID_PER_CLUSTER) -> Path:
    """One row per cluster (largest first): the samples nearest its centroid. Each row is labelled with the
    cluster, its size and the class it is matched to; each tile is framed in the colour of its spectroscopic class
    where the pipeline knows it (labeled and test objects), in grey where it does not (unlabeled); the caption
    says what a tile shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = np.argsort(metrics["cluster_sizes"])[::-1][:num_clusters].tolist()
    chosen = nearest_ids(samples, largest, per_cluster)
    images, known = _grid_images(shards_dir, manifest, samples["nearest"],
                                 {sample_id for ids in chosen.values() for sample_id in ids})
    tiles = {sample_id: _centre(image) for sample_id, image in images.items()}
    stretch = shared_stretch(list(tiles.values()))
    classes = metrics["classes"]
    figure, axes = plt.subplots(len(largest), per_cluster, figsize=(1.25 * per_cluster + 1.6, 1.3 * len(largest)
                                                                     + 0.9), squeeze=False)
    for row, cluster in enumerate(largest):
        for column in range(per_cluster):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            ids = chosen[cluster]
            if column >= len(ids):
                axis.axis("off")
                continue
            axis.imshow(_thumbnail(tiles[ids[column]], 96, stretch))
            label = known.get(ids[column])
            for spine in axis.spines.values():
                spine.set(color=CLASS_COLOURS[label % len(CLASS_COLOURS)] if label is not None else "0.75",
                          linewidth=3 if label is not None else 1)
        if row == 0 and chosen[cluster]:
            _scale_bar(axes[0][0], manifest)
        axes[row][0].set_ylabel(f"cluster {cluster}\nn = {metrics['cluster_sizes'][cluster]:,}\nmajority: "
                                f"{metrics['cluster_to_class'][cluster]}", rotation=0, ha="right", va="center",
                                fontsize=9)
    legend = [plt.Line2D([], [], color=CLASS_COLOURS[index % len(CLASS_COLOURS)], linewidth=3, label=name)
              for index, name in enumerate(classes)] + [plt.Line2D([], [], color="0.75", label="class unknown")]
    figure.legend(handles=legend, loc="upper center", ncol=len(legend), fontsize=9, frameon=False)
    bands = ("FITS bands shown as R, G, B = i, r, g where present (else the last three)"
             if manifest["encoding"] == "npy" else "the cutouts' own colours (SDSS: the gri composite)")
    scale = manifest.get("pixel_scale_arcsec")
    across = f" ({manifest['image_size'] / 2 * scale:.1f}\" across; scale bar in the first tile)" if scale else \
        " (angular scale unknown: pack --pixel-scale)"
    sizes = metrics["cluster_sizes"]
    left = [cluster for cluster in np.argsort(sizes)[::-1].tolist() if cluster not in largest]
    shown = (f"The {len(largest)} largest of {len(sizes)} clusters" + (
        f" (not shown: {', '.join(f'{cluster} (n = {sizes[cluster]:,})' for cluster in left[:8])}"
        f"{' ...' if len(left) > 8 else ''})" if left else ""))
    caption = textwrap.fill(
        f"{shown}, the {per_cluster} objects nearest each centroid. Tiles: the central half of the "
        f"{manifest['image_size']} px packed cutouts{across} ({manifest.get('preprocess', 'resize')} at pack), one "
        f"asinh stretch for every tile (brightness compares across tiles); {bands}. Frame: spectroscopic class; "
        f"majority: the class of most of the cluster's labeled objects.",
        int(figure.get_figwidth() * 15))  # characters per line at 8 pt
    figure.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8)
    lines = caption.count("\n") + 1
    figure.tight_layout(rect=(0, (0.2 * lines + 0.1) / figure.get_figheight(), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return path


def _scale_bar(axis, manifest: dict) -> None:
    """A bar of a round number of arcseconds, about a third of the tile wide, drawn on `axis` (tile pixels)."""
    from matplotlib import patheffects

    scale = manifest.get("pixel_scale_arcsec")
    if not scale:
        return
    tile_arcsec = manifest["image_size"] / 2 * scale  # the tile shows the central half
    length = max((value for value in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300) if value <= tile_arcsec / 2.5),
                 default=tile_arcsec / 3)
    width = axis.get_images()[0].get_array().shape[1]
    pixels = length / tile_arcsec * width
    limits = axis.get_xlim(), axis.get_ylim()
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]  # readable over a bright source
    axis.plot([0.08 * width, 0.08 * width + pixels], [0.88 * width] * 2, color="white", linewidth=2,
              path_effects=[patheffects.withStroke(linewidth=3.5, foreground="black")])
    axis.text(0.08 * width + pixels / 2, 0.84 * width, f'{length:g}"', color="white", ha="center", va="bottom",
              fontsize=7, path_effects=outline)
    axis.set(xlim=limits[0], ylim=limits[1])


def plot_cluster_table(metrics: dict, path: Path) -> Path:
    """Clusters x classes: counts of the labeled + test objects in each cluster, coloured by their fraction of the
    cluster (colour bar), rows grouped by the class each cluster is matched to and sorted by purity within it, with
    each cluster's size (every object it was fit on) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, matched = metrics["classes"], metrics["cluster_to_class"]
    table = np.array(metrics["cluster_class_table"], dtype=float)
    fractions = table / np.maximum(table.sum(1, keepdims=True), 1)
    purity = fractions.max(1)
    order = sorted(range(len(table)), key=lambda row: (classes.index(matched[row]), -purity[row]))
    figure, axis = plt.subplots(figsize=(5.5 + 0.5 * len(classes), 2.0 + 0.32 * len(table)))
    image = axis.imshow(fractions[order], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for position, row in enumerate(order):
        for column in range(len(classes)):
            axis.text(column, position, int(table[row, column]), ha="center", va="center", fontsize=8,
                      color="black" if fractions[row, column] > 0.6 else "white")
        axis.text(len(classes) - 0.4, position, f"{metrics['cluster_sizes'][row]:,}", ha="left", va="center",
                  fontsize=8)
    axis.set_xticks(range(len(classes)), classes)
    axis.set_yticks(range(len(order)), [f"{row} -> {matched[row]}" for row in order], fontsize=8)
    axis.set(xlabel="true (spectroscopic) class of the labeled + test objects", ylabel="cluster -> matched class")
    axis.text(len(classes) - 0.4, -0.9, "size", ha="left", va="center", fontsize=8)
    vote = "many-to-one majority vote" if len(table) > len(classes) else "one-to-one (Hungarian)"
    axis.set_title(f"k = {len(table)} clusters, {vote}\ncluster accuracy {metrics['accuracy']:.3f}   NMI "
                   f"{metrics['nmi']:.3f}   ARI {metrics['ari']:.3f}", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.04, pad=0.18, label="fraction of the cluster's labeled objects")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=150)
    plt.close(figure)
    return path
