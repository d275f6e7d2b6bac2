"""Checks of the loader's options, each failing with the Keras-style message that says what was
expected and what was received."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import OptionError


def is_int(value: Any) -> bool:
    """An int (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (Python or numpy int or float, NaN included), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int, none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum``; None passes where ``none``.

    Raises:
        ValueError: naming ``name`` and the value received.
    """
    if value is None and none:
        return None
    if not is_int(value) or value < minimum:
        raise OptionError(f"Expected `{name}` to be an int >= {minimum}{' or None' if none else ''}. "
                         f"Received: {name}={value!r}")
    return int(value)


def check_limits(*, cache_bytes: Any, device_cache_bytes: Any, min_tile_size: Any, max_image_pixels: Any,
                 num_threads: Any) -> None:
    """The loader's bounds and counts, checked before any file is read."""
    check_int(cache_bytes, "cache_bytes", minimum=0)
    check_int(device_cache_bytes, "device_cache_bytes", minimum=0, none=True)
    check_int(min_tile_size, "min_tile_size", minimum=1)
    check_int(max_image_pixels, "max_image_pixels", minimum=1)
    check_int(num_threads, "num_threads", minimum=1, none=True)


def check_labels(labels: Any) -> list[Any]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) == 0:
        raise OptionError("Expected `labels` to be a non-empty list of labels (e.g. years). "
                         f"Received: labels={labels!r}")
    if len({str(v) for v in labels}) != len(labels):
        raise OptionError(f"Expected `labels` to hold each label once. Received: labels={list(labels)!r}")
    return list(labels)


def check_size(value: Any, name: str, *, one_int: bool = False) -> tuple[int, int]:
    """``value`` as (height, width) of positive ints; with ``one_int`` an int n also stands for (n, n).

    Raises:
        ValueError: naming ``name`` and the value received.
    """
    pair = (value, value) if one_int and is_int(value) else value
    if not (isinstance(pair, (tuple, list, np.ndarray)) and len(pair) == 2 and all(is_int(v) and v > 0 for v in pair)):
        raise OptionError(f"Expected `{name}` to be (height, width) of positive ints. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def check_dim(dim: Any) -> tuple[int, int]:
    return check_size(dim, "dim")


def check_batch_size(batch_size: Any) -> int:
    if not is_int(batch_size) or batch_size < 1:
        raise OptionError(f"Expected `batch_size` to be a positive int. Received: batch_size={batch_size!r}")
    return int(batch_size)


def check_shard(shard_id: Any, num_shards: Any) -> tuple[int, int]:
    if not (is_int(shard_id) and is_int(num_shards)) or num_shards < 1 or not 0 <= shard_id < num_shards:
        raise OptionError("Expected 0 <= shard_id < num_shards. "
                         f"Received: shard_id={shard_id!r}, num_shards={num_shards!r}")
    return int(shard_id), int(num_shards)


def check_locality(locality: Any, shuffle: bool) -> None:
    if locality is None:
        return
    if locality != "auto" and not (is_int(locality) and locality >= 1):
        raise OptionError(f"Expected `locality` to be a number of regions >= 1, 'auto' or None. "
                         f"Received: locality={locality!r}")
    if not shuffle:
        raise OptionError("`locality` shapes the shuffle: it needs shuffle=True")


def check_interpolation(interpolation: Any, num_classes: int | None) -> str:
    if interpolation is None:
        return "nearest" if num_classes else "linear"
    if interpolation not in ("linear", "nearest"):
        raise OptionError("Expected `interpolation` to be 'linear' or 'nearest'. "
                         f"Received: interpolation={interpolation!r}")
    if num_classes and interpolation != "nearest":
        raise OptionError("`num_classes` one-hot encodes class ids, which only interpolation='nearest' keeps intact")
    return interpolation


def check_seed(seed: Any) -> int:
    """The seed as an int in [0, 2**32); None draws one."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 32))
    if not is_int(seed) or not 0 <= seed < 1 << 32:
        raise OptionError(f"Expected `random_seed` to be an int in [0, 2**32) or None. Received: random_seed={seed!r}")
    return int(seed)
