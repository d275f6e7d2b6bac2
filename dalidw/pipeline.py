"""The DALI graph: frame stacks in, resized and normalized float32 sequences out.

One graph for both devices; only the device strings differ. Per sample the input
"frames" is the (F, h, w, C) stack of crops of one tile (layout FHWC, uint8 or uint16),
and "target" its float32 targets. The whole stack is resized in one operator straight to
float32 and scaled, so a sample costs two operators however many frames it has.
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
        input_dtype: uint8 or uint16.
        scale: the factor applied after resizing (1/255, 1/65535, or 1 for raw values).
        split_last: True for "last-image": outputs (first F-1 frames, last frame).
        target_size: k, targets per tile (0 with ``split_last``).
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        num_threads: DALI's CPU threads.
    """

    batch_size: int
    dim: tuple[int, int]
    channels: int
    frames: int
    input_dtype: np.dtype
    scale: float
    split_last: bool
    target_size: int
    device: str
    device_id: int | None
    num_threads: int


def build_pipeline(spec: GraphSpec, *, prefetch_queue_depth: int = 2):
    """The DALI pipeline for ``spec``, not yet built.

    Outputs: x float32 (B, F, H, W, C) and y float32 (B, k) or, with ``split_last``,
    x float32 (B, F-1, H, W, C) and y float32 (B, H, W, C).
    """
    from nvidia.dali import fn, pipeline_def, types

    in_type = types.UINT16 if np.dtype(spec.input_dtype) == np.uint16 else types.UINT8

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  prefetch_queue_depth=prefetch_queue_depth, exec_dynamic=True)
    def sequences():
        frames = fn.external_source(name=FRAMES, batch=False, layout="FHWC", dtype=in_type, ndim=4,
                                    device=spec.device)
        x = fn.resize(frames, size=list(spec.dim), dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                      antialias=True)
        if spec.scale != 1.0:
            x = x * np.float32(spec.scale)
        if spec.split_last:
            return x[0 : spec.frames - 1], x[spec.frames - 1]
        y = fn.external_source(name=TARGET, batch=False, dtype=types.FLOAT, ndim=1, device=spec.device)
        return x, y

    return sequences()
