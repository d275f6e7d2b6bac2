"""The DALI graph: frame stacks in, resized and normalized float32 sequences out.

One graph for both devices; only the device strings differ. Per sample the input
"frames" is the (F, h, w, C) stack of crops of one tile (layout FHWC, in the images' sample
type), and "target" its float32 targets. The whole stack is resized in one operator straight to
float32, then scaled (one multiply, or a multiply-add per channel for mean/std), so a sample
costs two or three operators however many frames it has. Class maps are resized by nearest
neighbour in their own type and may be one-hot encoded instead of scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES = "frames"
TARGET = "target"


@dataclass(frozen=True)
class GraphSpec:
    """What the graph produces.

    Attributes:
        batch_size: samples per batch (the largest batch; a smaller one may be fed).
        dim: (height, width) of the output frames, in pixels.
        channels: C, channels of the frames.
        frames: F, frames per input stack.
        input_dtype: uint8, uint16, int16 or float32.
        gain: per channel, the factor applied after resizing (1/255 for uint8 normalized, say).
        offset: per channel, added after ``gain`` (-mean/std for standardization).
        interpolation: "linear" (antialiased when shrinking) or "nearest".
        num_classes: K to one-hot encode a single-channel class map (then gain and offset are
            not applied), or 0.
        split_last: True for "last-image": outputs (first F-1 frames, last frame).
        target_size: k, targets per tile (0 with ``split_last``).
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        num_threads: DALI's CPU threads.
        antialias: filter when shrinking; False where no frame is ever shrunk, which gives the
            same output faster.
    """

    batch_size: int
    dim: tuple[int, int]
    channels: int
    frames: int
    input_dtype: np.dtype
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    interpolation: str
    num_classes: int
    split_last: bool
    target_size: int
    device: str
    device_id: int | None
    num_threads: int
    antialias: bool = True

    @property
    def out_channels(self) -> int:
        """C of the output frames."""
        return self.num_classes or self.channels


def build_pipeline(spec: GraphSpec, *, prefetch_queue_depth: int = 2):
    """The DALI pipeline for ``spec``, not yet built.

    Outputs: x float32 (B, F, H, W, C) and y float32 (B, k) or, with ``split_last``,
    x float32 (B, F-1, H, W, C) and y float32 (B, H, W, C).
    """
    from nvidia.dali import fn, pipeline_def, types

    in_type = {"uint8": types.UINT8, "uint16": types.UINT16, "int16": types.INT16,
               "float32": types.FLOAT}[np.dtype(spec.input_dtype).name]

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  prefetch_queue_depth=prefetch_queue_depth, exec_dynamic=True)
    def sequences():
        frames = fn.external_source(name=FRAMES, batch=False, layout="FHWC", dtype=in_type, ndim=4,
                                    device=spec.device)
        if spec.interpolation == "nearest":
            x = fn.resize(frames, size=list(spec.dim), interp_type=types.INTERP_NN, antialias=False)
            if spec.num_classes:
                x = fn.one_hot(fn.squeeze(x, axes=[3]), num_classes=spec.num_classes, axis=-1, dtype=types.FLOAT)
            else:
                x = fn.cast(x, dtype=types.FLOAT)
        else:
            x = fn.resize(frames, size=list(spec.dim), dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                          antialias=spec.antialias)
        if not spec.num_classes:
            x = _affine(x, spec.gain, spec.offset, types)
        if spec.split_last:
            return x[0 : spec.frames - 1], x[spec.frames - 1]
        y = fn.external_source(name=TARGET, batch=False, dtype=types.FLOAT, ndim=1, device=spec.device)
        return x, y

    return sequences()


def _affine(x, gain: tuple[float, ...], offset: tuple[float, ...], types):
    """x * gain + offset, per channel; a scalar where all channels agree, nothing where it is 1 and 0."""
    def constant(values):
        if len(set(values)) == 1:
            return np.float32(values[0])
        return types.Constant(np.asarray(values, dtype=np.float32))

    if any(g != 1.0 for g in gain):
        x = x * constant(gain)
    if any(o != 0.0 for o in offset):
        x = x + constant(offset)
    return x
