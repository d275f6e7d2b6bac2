"""Pictures of tile sequences after exactly the loader's preprocessing: one tile, or a batch."""

from __future__ import annotations

import numpy as np

from .loader import SequenceDataLoader


def _panel(ax, image: np.ndarray, normalized: bool, one_hot: bool = False) -> None:
    """Draw one (H, W, C) frame: a one-hot class map in Dynamic World's colours, gray for 1 channel,
    the first three as RGB otherwise."""
    if one_hot:
        from .synth import PALETTE

        classes = image.argmax(axis=-1)
        image = PALETTE[classes % len(PALETTE)] / 255.0
        normalized = True
    if not normalized:
        image = image / max(float(np.abs(image).max()), 1e-12)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
        ax.imshow(rgb.clip(0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(rows: int, cols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    return plt, fig, axes


def save_batch_png(loader: SequenceDataLoader, index: int, out_path: str, *, max_rows: int = 8) -> int:
    """A grid of batch ``index`` of the loader's current epoch: one row per tile (at most
    ``max_rows``), one column per frame, the tile_id and target at the left. Returns the rows drawn."""
    x, y = loader[index]
    ids = loader.tile_ids(index)
    rows = min(len(x), max_rows)
    plt, fig, axes = _figure(rows, x.shape[1])
    for r in range(rows):
        for f in range(x.shape[1]):
            _panel(axes[r, f], x[r, f], loader.normalize, bool(loader.channels.num_classes))
            if r == 0:
                axes[r, f].set_title(str(loader.labels[f]))
        target = "" if loader.split_last else f"\n{np.ravel(y[r])[0]:.3f}"
        axes[r, 0].set_ylabel(f"{ids[r]}{target}", rotation=0, ha="right", va="center")
    fig.suptitle(f"batch {index} of epoch {loader.epoch} ({len(x)} tiles, {rows} shown)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return rows


def save_tile_png(loader: SequenceDataLoader, tile_id, out_path: str) -> None:
    """One panel per label with its year, the target in the title; what the model sees."""
    matches = np.flatnonzero(loader.table.tile_ids == tile_id)
    if len(matches) == 0:
        raise KeyError(f"tile_id {tile_id!r} is not in the tiles table")
    x, y = loader.sample(int(matches[0]))
    frames = x.shape[0]
    plt, fig, axes = _figure(1, frames)
    for f in range(frames):
        _panel(axes[0, f], x[f], loader.normalize, bool(loader.channels.num_classes))
        axes[0, f].set_title(str(loader.labels[f]))
    target = "" if loader.split_last else f", target {np.ravel(y)[0]:.3f}"
    fig.suptitle(f"tile {tile_id}{target}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
