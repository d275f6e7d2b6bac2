"""The DALI graph: per-sample frame data and boxes in, resized and normalized float32 sequences out.

One graph for both devices and both sources of frames; only device strings and the first node differ:

- ``source="regions"``: each sample of the input "frames" is a whole region stack (T, H, W, C),
  handed over without a copy (the same stack for every tile of that region); DALI cuts the tile's
  box out with ``slice`` (input "box": (y, x, h, w) in pixels, one input rather than two because
  each input costs the host a ``feed_input`` per batch).
- ``source="crops"``: each sample is the tile's own (T, h, w, C) frames, cut on the host. With
  ``ragged`` (boxes of several sizes in one batch) the batch is zero-padded to its largest box and
  "shape" says what to keep.

Then, per sample: the augmentation (inputs "transpose", "flip_h", "flip_v"), one resize of the
whole (T, h, w, C) stack straight to float32, one multiply (or multiply-add per channel for
mean/std), and the last frame split off for "last-image". Nothing is padded in the batch
dimension: a partial batch is simply a smaller batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .bands import DALI_TYPE_NAMES

FRAMES = "frames"
BOX = "box"
SHAPE = "shape"
TRANSPOSE = "transpose"
FLIP_H = "flip_h"
FLIP_V = "flip_v"
TARGET = "target"

SOURCES = ("crops", "regions")
#: DALI CPU threads of a graph on the GPU, unless the user sets ``num_threads``. There the CPU side
#: only reads per-sample boxes and flags: on an H200 with 16 cores, 2 threads ran the region graph
#: at 64,500 samples/s with 1.9 host cores busy, 16 threads at 48,300 with 3.8
#: (bench/results/gpu-variants-h200.json).
GPU_GRAPH_THREADS = 2
#: Inputs that are per-sample arguments (boxes, flags), read on the CPU by design.
ARGUMENT_INPUTS = (BOX, SHAPE, TRANSPOSE, FLIP_H, FLIP_V)


@dataclass(frozen=True)
class GraphSpec:
    """What the graph reads and produces.

    Attributes:
        batch_size: samples per batch (the largest batch; smaller ones may be fed).
        dim: (height, width) of the output frames, in pixels.
        channels: C, channels of the frames.
        frames: F, frames per sample (T).
        input_dtype: uint8, uint16, int16 or float32.
        gain: per channel, the factor applied after resizing (1/255 for uint8 normalized, say).
        offset: per channel, added after ``gain`` (-mean/std for standardization).
        interpolation: "linear" (antialiased when shrinking) or "nearest".
        num_classes: K to one-hot encode a single-channel class map (then gain and offset are
            not applied), or 0.
        split_last: True for "last-image": outputs (first F-1 frames, last frame).
        target_size: k, targets per tile (0 with ``split_last``); with k = 1, y is (B,).
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        num_threads: DALI's CPU threads.
        antialias: filter when shrinking; False where no frame is ever shrunk (same output, faster).
        source: "crops" or "regions" (see the module docstring).
        ragged: with "crops", the boxes of a batch may differ in size.
        turns: samples may be transposed (quarter turns).
        flips: samples may be flipped.
        resize: False where every box already has the output size: frames are cast, not resampled.
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
    source: str = "crops"
    ragged: bool = False
    turns: bool = False
    flips: bool = False
    resize: bool = True

    @property
    def out_channels(self) -> int:
        """C of the output frames."""
        return self.num_classes or self.channels

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names of the graph's external inputs, in feeding order."""
        names = [FRAMES]
        if self.source == "regions":
            names.append(BOX)
        elif self.ragged:
            names.append(SHAPE)
        if self.turns:
            names.append(TRANSPOSE)
        if self.flips or self.turns:
            names += [FLIP_H, FLIP_V]
        if not self.split_last:
            names.append(TARGET)
        return tuple(names)

    def output_shapes(self) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        """Shapes of (x, y), the batch dimension None (the last batch of an epoch may be smaller)."""
        h, w = self.dim
        c = self.out_channels
        if self.split_last:
            return (None, self.frames - 1, h, w, c), (None, h, w, c)
        return (None, self.frames, h, w, c), ((None,) if self.target_size == 1 else (None, self.target_size))


def box_facts(sizes: np.ndarray, dim: tuple[int, int], *, turns: bool) -> dict[str, bool]:
    """What the tiles' box sizes tell the graph.

    Args:
        sizes: int (n_tiles, 2) (h, w) of every box, in pixels.
        dim: (H, W) of the output frames.
        turns: boxes may be turned a quarter (then h and w swap).

    Returns:
        ragged: the boxes differ in size; antialias: some frame is shrunk along some axis (where
        the antialias filter matters); resize: some frame differs from ``dim`` (when none does,
        frames are copied as they are, so a NaN stays in its own pixel).
    """
    reach = np.full(2, sizes.max()) if turns else sizes.max(axis=0)  # a quarter turn swaps h and w
    same = bool((sizes == np.asarray(dim)).all()) and (not turns or dim[0] == dim[1])
    return {"ragged": bool((sizes != sizes[0]).any()), "antialias": bool(reach[0] > dim[0] or reach[1] > dim[1]),
            "resize": not same}


def build_pipeline(spec: GraphSpec, *, prefetch_queue_depth: int = 2, nodes: list | None = None):
    """The DALI pipeline for ``spec``, not yet built. Its inputs are ``spec.inputs``, fed a batch at
    a time (``batch=True``).

    Outputs: x float32 (B, F, H, W, C) and y float32 (B,) or (B, k); with ``split_last``,
    x float32 (B, F-1, H, W, C) and y float32 (B, H, W, C). ``nodes``, when given, receives the
    output nodes (for :func:`placement`).
    """
    from nvidia.dali import fn, pipeline_def, types

    if spec.source not in SOURCES:
        raise ValueError(f"Expected GraphSpec.source in {SOURCES}. Received: {spec.source!r}")
    in_type = getattr(types, DALI_TYPE_NAMES[np.dtype(spec.input_dtype).name])

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  prefetch_queue_depth=prefetch_queue_depth, exec_dynamic=True, enable_conditionals=spec.turns)
    def sequences():
        x = fn.external_source(name=FRAMES, batch=True, layout="FHWC", dtype=in_type, ndim=4, device=spec.device,
                               no_copy=spec.source == "regions" or spec.device == "cpu")
        if spec.source == "regions":
            box = fn.external_source(name=BOX, batch=True, dtype=types.INT32, ndim=1)
            x = fn.slice(x, start=box[0:2], shape=box[2:4], axes=[1, 2])
        elif spec.ragged:
            shape = fn.external_source(name=SHAPE, batch=True, dtype=types.INT32, ndim=1)
            x = fn.slice(x, start=[0, 0], shape=shape, axes=[1, 2])
        if spec.turns:
            transpose = fn.external_source(name=TRANSPOSE, batch=True, dtype=types.BOOL, ndim=0)
            if transpose:  # a DALI conditional: only the samples whose flag is set are transposed
                x = fn.transpose(x, perm=[0, 2, 1, 3], output_layout="FHWC")
        if spec.flips or spec.turns:
            flip_h = fn.external_source(name=FLIP_H, batch=True, dtype=types.INT32, ndim=0)
            flip_v = fn.external_source(name=FLIP_V, batch=True, dtype=types.INT32, ndim=0)
            x = fn.flip(x, horizontal=flip_h, vertical=flip_v)
        if not spec.resize:
            x = fn.cast(x, dtype=types.FLOAT)
            if spec.num_classes:
                x = fn.one_hot(fn.squeeze(x, axes=[3]), num_classes=spec.num_classes, axis=-1, dtype=types.FLOAT)
        elif spec.interpolation == "nearest":
            x = fn.resize(x, size=list(spec.dim), interp_type=types.INTERP_NN, antialias=False)
            if spec.num_classes:
                x = fn.one_hot(fn.squeeze(x, axes=[3]), num_classes=spec.num_classes, axis=-1, dtype=types.FLOAT)
            else:
                x = fn.cast(x, dtype=types.FLOAT)
        else:
            x = fn.resize(x, size=list(spec.dim), dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                          antialias=spec.antialias)
        if not spec.num_classes:
            x = _affine(x, spec.gain, spec.offset, types, spec.device)
        if spec.split_last:
            outputs = (x[0 : spec.frames - 1], x[spec.frames - 1])
        else:
            y = fn.external_source(name=TARGET, batch=True, dtype=types.FLOAT,
                                   ndim=0 if spec.target_size == 1 else 1, device=spec.device)
            outputs = (x, y)
        if nodes is not None:
            nodes.extend(outputs)
        return outputs

    return sequences()


def stack_references(stacks: dict[int, Any], regions: np.ndarray) -> Any:
    """The "frames" input of a "regions" graph: a DALI tensor list of b samples, sample i being the
    (T, H, W, C) stack of region ``regions[i]`` from ``stacks`` (region -> numpy or CuPy array),
    sharing its memory. Each stack is wrapped once per batch, not once per sample, and the list is
    handed to DALI whole (``contiguous=False``: no pixel is copied), which spares ``feed_input``
    its per-sample Python loop."""
    from nvidia.dali.tensors import TensorCPU, TensorGPU, TensorListCPU, TensorListGPU

    wrapped = {region: TensorCPU(stack, "FHWC") if isinstance(stack, np.ndarray)
               else TensorGPU(stack, "FHWC", int(stack.device.id)) for region, stack in stacks.items()}
    samples = [wrapped[region] for region in regions.tolist()]
    kind = TensorListCPU if isinstance(samples[0], TensorCPU) else TensorListGPU
    return kind(samples, "FHWC", contiguous=False)


def feed_batch(pipe: Any, inputs: dict[str, Any], *, cuda_stream: Any = None) -> None:
    """Hand one batch's ``inputs`` (name -> a batch array or DALI tensor list, from the feed) to
    ``pipe``'s external sources. An array goes in wrapped as one DALI tensor list (sharing its
    memory), which spares ``feed_input`` its checks of a foreign array (about 40 us per input).
    ``cuda_stream``, where given, is passed to ``feed_input`` with each tensor list (DALI's
    meaning: the stream its device data was written on; 0 the default stream, -1 DALI's own)."""
    from nvidia.dali.tensors import TensorListCPU

    streams = {} if cuda_stream is None else {"cuda_stream": cuda_stream}
    for name, batch in inputs.items():
        if isinstance(batch, np.ndarray):
            pipe.feed_input(name, TensorListCPU(batch))
        else:
            pipe.feed_input(name, batch, **streams)


def placement(outputs: list) -> list[tuple[str, str]]:
    """(operator, device) of every operator on the data path to ``outputs`` (DALI output nodes).
    Argument inputs (boxes, flags) and the operators computed from them alone (the box's
    subscripts) are left out: they are per-sample scalars and belong on the CPU."""
    from_arguments: dict[int, bool] = {}

    def argument_only(node) -> bool:
        op = node.source
        if op is None:
            return False
        if id(op) not in from_arguments:
            from_arguments[id(op)] = str(op.name) in ARGUMENT_INPUTS or (
                bool(op.inputs) and all(argument_only(n) for n in op.inputs))
        return from_arguments[id(op)]

    seen: dict[int, tuple[str, str]] = {}
    stack = list(outputs)
    while stack:
        node = stack.pop()
        op = node.source
        if op is None or id(op) in seen or argument_only(node):
            continue
        seen[id(op)] = (str(op.name), str(node.device))
        stack.extend(op.inputs or [])
    return sorted(set(seen.values()))


def _affine(x, gain: tuple[float, ...], offset: tuple[float, ...], types, device: str):
    """x * gain + offset, per channel; a scalar where all channels agree, nothing where it is 1 and 0.
    Per-channel constants live on the graph's device, so they are not copied there every batch."""

    def constant(values):
        if len(set(values)) == 1:
            return np.float32(values[0])
        return types.Constant(np.asarray(values, dtype=np.float32), device=device)

    if any(g != 1.0 for g in gain):
        x = x * constant(gain)
    if any(o != 0.0 for o in offset):
        x = x + constant(offset)
    return x
