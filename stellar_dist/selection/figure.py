"""The chosen cutouts in rank order, captioned with rank and cluster: what the observer is asked to get spectra for."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.files import atomic_path

MAX_SHOWN = 60  # targets shown, in rank order
PER_ROW = 10


def plot_targets(frame: pd.DataFrame, raws: dict[int, dict], manifest: dict, path: Path) -> Path:
    """The first MAX_SHOWN targets in rank order, each captioned with its rank and cluster; `raws`: the targets'
    raw samples by id (already read for the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.streams import picture

    shown = frame.head(MAX_SHOWN)
    num_rows = -(-len(shown) // PER_ROW)
    figure, axes = plt.subplots(num_rows, PER_ROW, figsize=(1.15 * PER_ROW, 1.3 * num_rows + 0.5), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= len(shown) or int(shown["id"].iloc[index]) not in raws:
            axis.axis("off")
            continue
        target = shown.iloc[index]
        axis.imshow(picture(raws[int(target["id"])], manifest))
        where = "" if target["cluster"] < 0 else f" c{target['cluster']}"
        axis.set_title(f"#{target['rank']}{where}", fontsize=7)
    figure.suptitle(f"{len(frame)} targets by {frame['rule'].iloc[0]} (#rank, c: cluster)"
                    + (f"; first {MAX_SHOWN} shown" if len(frame) > MAX_SHOWN else ""), fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    return path
