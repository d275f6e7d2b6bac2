"""Train/validation/test splits of tiles that do not leak: whole regions, or spatial blocks with a buffer.

Neighbouring tiles share most of their pixels' context (and overlapping tiles share pixels), so a
random split of tiles puts nearly the same data on both sides. Here the unit of a split is a region
or a block of tiles, and between blocks of different splits the tiles closer than one tile are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import OptionError

SPLITS = ("train", "val", "test")


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0.7,0.15,0.15' or a sequence -> 2 or 3 fractions of (train, val[, test]) that sum to 1.

    Raises:
        ValueError: not 2 or 3 non-negative numbers summing to 1, or no training share.
    """
    try:
        values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise OptionError(f"Expected split fractions like 0.7,0.15,0.15. Received: {text!r}") from None
    if len(values) not in (2, 3) or min(values) < 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise OptionError("Expected 2 or 3 split fractions (train, val[, test]) >= 0 that sum to 1. "
                          f"Received: {text!r}")
    if values[0] == 0:
        raise OptionError(f"Expected a training share above 0. Received: {text!r}")
    return values


def parse_split(text: str) -> tuple[str, int]:
    """'region' -> ("region", 0); 'blocks:8' -> ("blocks", 8); 'random' -> ("random", 0).

    Raises:
        ValueError: another word, or a block size that is not a whole number >= 1.
    """
    kind, _, size = text.partition(":")
    if kind == "blocks":
        if not size.isdigit() or int(size) < 1:
            raise OptionError(f"Expected --split blocks:N with N >= 1 tiles a side. Received: {text!r}")
        return kind, int(size)
    if kind in ("region", "random") and not size:
        return kind, 0
    raise OptionError(f"Expected --split to be 'region', 'blocks:N' or 'random'. Received: {text!r}")


def assign_units(n_units: int, fractions: Sequence[float], rng: np.random.Generator, what: str) -> np.ndarray:
    """int8 (n_units,) split code (index into SPLITS) of each unit, shuffled, in the given proportions.

    Every split with a share above 0 gets at least one unit.

    Raises:
        ValueError: fewer units than splits with a share.
    """
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n_units < len(wanted):
        raise OptionError(f"a split into {', '.join(SPLITS[i] for i in wanted)} needs at least {len(wanted)} "
                         f"{what}; there are {n_units}")
    counts = np.zeros(len(fractions), dtype=int)
    counts[wanted] = 1
    rest = n_units - len(wanted)
    counts += np.floor(np.asarray(fractions) * rest).astype(int)
    counts[0] += n_units - counts.sum()  # rounding leftovers go to training
    codes = np.repeat(np.arange(len(fractions), dtype=np.int8), counts)
    return codes[rng.permutation(n_units)]


def near_radius(tile: int, stride: int) -> int:
    """How many grid steps apart two tiles of ``tile`` pixels on a ``stride`` grid can be and still be
    closer than one tile (gap < tile): the largest k with k * stride < 2 * tile."""
    return math.ceil(2 * tile / stride) - 1


def buffer_drop(codes: np.ndarray, radius: tuple[int, int]) -> np.ndarray:
    """bool (ny, nx): the grid cells to drop so that no two kept tiles of different splits are near.

    Args:
        codes: int (ny, nx) split code per grid cell, -1 where there is no tile.
        radius: (rows, cols) grid steps within which two tiles are near (see :func:`near_radius`).

    A tile is dropped when a near tile has a higher split code (train < val < test): the buffer is
    taken from the training side (the largest), so validation and test blocks stay whole.
    """
    ny, nx = codes.shape
    ry, rx = radius
    padded = np.full((ny + 2 * ry, nx + 2 * rx), -1, dtype=np.int16)
    padded[ry : ry + ny, rx : rx + nx] = codes
    highest = np.full((ny, nx), -1, dtype=np.int16)
    for dy in range(2 * ry + 1):
        for dx in range(2 * rx + 1):
            np.maximum(highest, padded[dy : dy + ny, dx : dx + nx], out=highest)
    return (codes >= 0) & (highest > codes)


def block_codes(rows: np.ndarray, cols: np.ndarray, regions: np.ndarray, block: int,
                fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """int8 (N,) split code of each tile from its block: tiles at grid (row, col) of a region fall in
    block (row // block, col // block) of that region; blocks are shuffled into the splits."""
    block_rows, block_cols = rows // block, cols // block
    wide = int(block_cols.max()) + 1 if len(cols) else 1
    tall = int(block_rows.max()) + 1 if len(rows) else 1
    keys = (regions.astype(np.int64) * tall + block_rows) * wide + block_cols
    _, unit = np.unique(keys, return_inverse=True)
    unit = unit.reshape(-1)
    return assign_units(int(unit.max()) + 1 if len(unit) else 0, fractions, rng, "blocks")[unit]


def split_tiles(kind: str, block: int, regions: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                radius: tuple[int, int], fractions: Sequence[float], seed: int) -> np.ndarray:
    """The split of each tile: object (N,) of "train", "val", "test", or "" for a buffer tile to drop.

    Args:
        kind, block: from :func:`parse_split`.
        regions: int (N,) region number of each tile.
        rows, cols: int (N,) the tile's place on its region's grid.
        radius: see :func:`buffer_drop`.
        fractions: from :func:`parse_fractions`.
        seed: the split follows from it alone.
    """
    rng = np.random.default_rng(seed)
    if kind == "region":
        names, unit = np.unique(regions, return_inverse=True)
        codes = assign_units(len(names), fractions, rng, "regions")[unit.reshape(-1)]
    elif kind == "random":
        codes = assign_units(len(regions), fractions, rng, "tiles")
    else:
        codes = block_codes(rows, cols, regions, block, fractions, rng)
    out = np.array(SPLITS, dtype=object)[codes]
    if kind == "blocks":
        for region in np.unique(regions):
            at = np.flatnonzero(regions == region)
            grid = np.full((rows[at].max() + 1, cols[at].max() + 1), -1, dtype=np.int16)
            grid[rows[at], cols[at]] = codes[at]
            drop = buffer_drop(grid, radius)
            out[at[drop[rows[at], cols[at]]]] = ""
    return out
