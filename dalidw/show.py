"""A picture of one tile's sequence after exactly the loader's preprocessing."""

from __future__ import annotations

import numpy as np

from .loader import SequenceDataLoader


def save_tile_png(loader: SequenceDataLoader, tile_id, out_path: str) -> None:
    """One panel per label with its year, the target in the title; what the model sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matches = np.flatnonzero(loader.table.tile_ids == tile_id)
    if len(matches) == 0:
        raise KeyError(f"tile_id {tile_id!r} is not in the tiles table")
    x, y = loader.sample(int(matches[0]))
    frames = x.shape[0]
    fig, axes = plt.subplots(1, frames, figsize=(2.2 * frames, 2.6), squeeze=False)
    for f in range(frames):
        ax = axes[0, f]
        image = x[f]
        if loader.normalize is False:
            image = image / max(float(image.max()), 1.0)
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image.clip(0, 1),
                  cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
        ax.set_title(str(loader.labels[f]))
        ax.axis("off")
    target = "" if loader.split_last else f", target {np.ravel(y)[0]:.3f}"
    fig.suptitle(f"tile {tile_id}{target}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
