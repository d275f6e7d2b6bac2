"""From the user's normalize / scale / mean / std to one multiply-add per channel on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .bands import DTYPE_RANGES, ChannelSpec
from .errors import OptionError
from .options import is_number


def _per_channel(name: str, value: Any, channels: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(channels, float(array))
    if array.shape != (channels,) or not np.all(np.isfinite(array)):
        raise OptionError(f"Expected `{name}` to be a number or {channels} finite numbers, one per channel. "
                         f"Received: {name}={value!r}")
    return array


def affine(
    dtype: np.dtype,
    channels: int,
    *,
    normalize: bool,
    scale: float | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (gain, offset) so that output = value * gain + offset.

    The value is first divided by ``scale`` (default with ``normalize=True``: the sample type's
    range, 255 or 65535; float images are kept as they are), then standardized as
    (value - mean) / std, where mean and std are in the units after that division.

    Raises:
        ValueError: ``scale`` with ``normalize=False``, or ``scale``, ``mean``, ``std`` out of range.
    """
    if scale is not None:
        if not normalize:
            raise OptionError("`scale` divides the values when normalizing: it needs normalize=True. "
                             f"Received: scale={scale!r}, normalize=False")
        if not is_number(scale) or not np.isfinite(scale) or scale <= 0:
            raise OptionError(f"Expected `scale` to be a positive number. Received: scale={scale!r}")
        divisor = float(scale)
    elif normalize:
        divisor = DTYPE_RANGES[np.dtype(dtype).name] or 1.0
    else:
        divisor = 1.0
    mean_v = _per_channel("mean", 0.0 if mean is None else mean, channels)
    std_v = _per_channel("std", 1.0 if std is None else std, channels)
    if np.any(std_v <= 0):
        raise OptionError(f"Expected `std` to be positive. Received: std={std!r}")
    gain = 1.0 / (divisor * std_v)
    offset = -mean_v / std_v
    return tuple(float(g) for g in gain), tuple(float(o) for o in offset)


def check_normalization(channels: ChannelSpec, normalize: bool, scale: float | None,
                        mean: float | Sequence[float] | None, std: float | Sequence[float] | None) -> dict[str, Any]:
    """The loader's ``normalize``, ``scale``, ``mean`` and ``std`` as keywords of :func:`affine`,
    checked before any file is read (one-hot class maps are never normalized).

    Raises:
        ValueError: an option is out of range, or ``scale``, ``mean`` or ``std`` comes with ``num_classes``.
    """
    if channels.num_classes and (scale is not None or mean is not None or std is not None):
        raise OptionError("`num_classes` gives one-hot channels of 0 and 1: `scale`, `mean` and `std` do not apply")
    norm = dict(normalize=bool(normalize) and not channels.num_classes, scale=scale, mean=mean, std=std)
    affine(np.dtype("uint8"), channels.kept, **norm)
    return norm
