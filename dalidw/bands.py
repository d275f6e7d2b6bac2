"""Which channels a frame has: RGB, gray (luma), picked bands, or a class map to one-hot encode.

The choice is checked against every image's header before any decoding. The selection runs once
per decoded region image, so the cache holds only the channels the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DecodeError, OptionError
from .options import is_int

#: Sample types read, with the value that ``normalize=True`` divides by (None: float data, kept as is).
DTYPE_RANGES: dict[str, float | None] = {"uint8": 255.0, "uint16": 65535.0, "int16": 32767.0, "float32": None}
#: The same sample types by the name of their ``nvidia.dali.types`` member.
DALI_TYPE_NAMES: dict[str, str] = {"uint8": "UINT8", "uint16": "UINT16", "int16": "INT16", "float32": "FLOAT"}
#: The sample types DALI's image decoder gives (signed samples take the tifffile path).
DALI_DECODES = ("uint8", "uint16", "float32")
#: The sample types DALI's GPU ("mixed") decoder gives right. On DALI 2.4 with nvImageCodec 0.9 it
#: decodes float32 TIFFs to wrong pixels without an error (seen on an H200 by bench/gpu_check.py),
#: so float32 regions are decoded by DALI's CPU decoder even when the graph runs on the GPU.
DALI_GPU_DECODES = ("uint8", "uint16")


@dataclass(frozen=True)
class ChannelSpec:
    """The channels asked for, before looking at any image.

    Attributes:
        kept: channels kept from each image: 1 (gray) or 3 (RGB) when ``bands`` is None; else
            len(bands). (The loader's ``n_channels`` is the output's, ``out_channels``.)
        bands: band indices (0-based) to pick from a multi-band image, in output order; None for
            the RGB / gray rules.
        num_classes: K to one-hot encode a single-band class map to K channels; None for no encoding.
    """

    kept: int
    bands: tuple[int, ...] | None
    num_classes: int | None

    @classmethod
    def from_options(cls, n_channels: Any, bands: Any, num_classes: Any) -> ChannelSpec:
        """Check the constructor's options; ``n_channels=None`` follows ``bands`` or ``num_classes``."""
        if bands is not None:
            if isinstance(bands, (str, bytes)) or not isinstance(bands, Sequence) or len(bands) == 0 \
                    or not all(is_int(b) and b >= 0 for b in bands):
                raise OptionError("Expected `bands` to be a non-empty list of band indices >= 0. "
                                 f"Received: bands={bands!r}")
            bands = tuple(int(b) for b in bands)
            if n_channels is not None and n_channels != len(bands):
                raise OptionError(f"`n_channels` follows `bands`: got n_channels={n_channels!r} with "
                                 f"{len(bands)} band(s) {list(bands)}. Leave n_channels out.")
            n_channels = len(bands)
        elif n_channels is None:
            n_channels = 1 if num_classes is not None else 3
        elif not is_int(n_channels) or n_channels not in (1, 3):
            raise OptionError(f"Expected `n_channels` to be 1 (gray) or 3 (RGB); pick other bands with `bands=`. "
                             f"Received: n_channels={n_channels!r}")
        if num_classes is not None:
            if not is_int(num_classes) or num_classes < 2:
                raise OptionError(f"Expected `num_classes` to be an int >= 2. Received: num_classes={num_classes!r}")
            if n_channels != 1:
                raise OptionError(f"`num_classes` one-hot encodes a single-band class map, but {n_channels} channels "
                                 "are asked for: pick the class band with bands=[i] or n_channels=1")
            num_classes = int(num_classes)
        return cls(int(n_channels), bands, num_classes)

    @property
    def out_channels(self) -> int:
        """C of the output frames: K with one-hot encoding, else the selected channels."""
        return self.num_classes or self.kept

    def problem(self, path: str, channels: int, dtype: np.dtype) -> str | None:
        """Why an image with this header cannot give these channels, or None."""
        if self.num_classes is not None and dtype.kind not in "ui":
            return f"{path}: samples are {dtype.name}; num_classes needs integer class ids"
        if self.bands is not None:
            if max(self.bands) >= channels:
                return f"{path}: has {channels} band(s); bands={list(self.bands)} asks for band {max(self.bands)}"
            return None
        if self.kept == 3 and channels not in (3, 4):
            return (f"{path}: has {channels} band(s); n_channels=3 needs an RGB or RGBA image "
                    "(pick bands with bands=[...])")
        if self.kept == 1 and channels not in (1, 3, 4):
            return f"{path}: has {channels} bands; n_channels=1 needs a gray, RGB or RGBA image (or bands=[i])"
        return None

    def select(self, image: np.ndarray, path: str) -> np.ndarray:
        """(H, W, bands) as decoded -> (H, W, n_channels), contiguous, same sample type.

        Raises:
            DecodeError: a class map holds ids outside [0, num_classes).
        """
        if self.bands is not None:
            out = image[..., list(self.bands)] if self.bands != tuple(range(image.shape[-1])) else image
        elif self.kept == 3:
            out = image[..., :3]
        elif image.shape[-1] == 1:
            out = image
        else:
            out = luma(image[..., :3])
        out = np.ascontiguousarray(out)
        if self.num_classes is not None:
            low, high = int(out.min()), int(out.max())
            if low < 0 or high >= self.num_classes:
                bad = high if high >= self.num_classes else low
                raise DecodeError(path, f"holds class id {bad}, outside num_classes={self.num_classes} "
                                        f"(0..{self.num_classes - 1})")
        return out


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (H, W, 3) as (H, W, 1), same sample type; integers rounded as PIL's "L"."""
    if rgb.dtype.kind == "f":
        gray = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
        return gray.astype(rgb.dtype)[..., None]
    wide = np.int64 if rgb.dtype.kind == "i" else np.uint32
    value = rgb[..., 0].astype(wide) * 299 + rgb[..., 1].astype(wide) * 587 + rgb[..., 2].astype(wide) * 114
    return ((value + 500) // 1000).astype(rgb.dtype)[..., None]
