"""Geometric augmentation drawn once per sample and applied to every frame of its sequence.

A transform is one of the 8 symmetries of the square, coded 0..7: ``code & 3`` quarter turns
counter-clockwise, then a left-right flip when ``code & 4``. Codes are drawn per tile from
``(seed, epoch)`` alone, so ``loader[i]`` and ``dataset()`` agree and every epoch is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import OptionError

#: The augmentations by name, with the transform codes each allows.
_CHOICES = {
    frozenset(): (0,),
    frozenset({"flip"}): (0, 4, 6, 2),  # identity, left-right, up-down (= half turn + left-right), half turn
    frozenset({"rot90"}): (0, 1, 2, 3),
    frozenset({"flip", "rot90"}): tuple(range(8)),
}
NAMES = ("flip", "rot90")


def parse_augment(augment: Any, dim: tuple[int, int]) -> tuple[int, ...]:
    """The transform codes allowed by ``augment``: None/False, True (flips and quarter turns),
    "flip", "rot90", or a list of those names.

    Raises:
        ValueError: an unknown name, or quarter turns with a non-square ``dim`` (a turned frame
            would be stretched to another aspect ratio).
    """
    if augment is None or augment is False:
        names: set[str] = set()
    elif augment is True:
        names = set(NAMES)
    elif isinstance(augment, str):
        names = {augment}
    elif isinstance(augment, Sequence):
        names = set(augment)
    else:
        names = {repr(augment)}
    unknown = names - set(NAMES)
    if unknown:
        raise OptionError(f"Expected `augment` to be True, False, 'flip', 'rot90' or a list of those. "
                         f"Received: augment={augment!r}")
    if "rot90" in names and dim[0] != dim[1]:
        raise OptionError(f"augment='rot90' needs a square `dim`: a quarter turn swaps height and width. "
                         f"Received: dim={dim!r}")
    return _CHOICES[frozenset(names)]


def draw_codes(choices: tuple[int, ...], n_tiles: int, rng: np.random.Generator) -> np.ndarray | None:
    """int8 (n_tiles,) transform codes drawn from ``rng``, by table position; None without augmentation."""
    if choices == (0,):
        return None
    return np.asarray(choices, dtype=np.int8)[rng.integers(0, len(choices), n_tiles)]


def transform(frame: np.ndarray, code: int) -> np.ndarray:
    """(h, w, C) -> the frame turned ``code & 3`` quarter turns, then flipped left-right if ``code & 4``
    (a view, no copy)."""
    out = np.rot90(frame, int(code) & 3, axes=(0, 1))
    return out[:, ::-1] if code & 4 else out


def as_graph_ops(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transform codes -> the same transforms as graph ops: (transpose height and width, then flip
    left-right, then flip up-down), each a bool (b,) array.

    A quarter turn counter-clockwise is a transpose then an up-down flip; three quarter turns, a
    transpose then a left-right flip; a half turn, both flips.
    """
    codes = np.asarray(codes, dtype=np.int8)
    turns = codes & 3
    transpose = (turns & 1).astype(bool)
    up_down = (turns == 1) | (turns == 2)
    left_right = ((turns == 2) | (turns == 3)) ^ ((codes & 4) != 0)
    return transpose, left_right, up_down
