"""The DALI graph: per-sample frames in, resized and normalized float32 sequences out.

One graph for both devices. Its input "frames" holds each sample's (T, h, w, C) frames in the
images' sample type, with nothing gathered behind DALI's back: on the CPU a list of each tile's
own arrays, which DALI's CPU external source reads without a copy; on the GPU one contiguous
device buffer per batch, cut on the device, which DALI's GPU external source shares (a list of
separate device tensors would be copied into a new buffer every batch); under TensorFlow's plugin
one contiguous host buffer. A buffer of boxes of several sizes (``ragged``) is padded to the
largest box, and the input "shape" says what to keep of each sample.

Then, per sample: the augmentation (inputs "transpose", "flip_h", "flip_v"), one resize of the
whole (T, h, w, C) stack straight to float32, one multiply (or multiply-add per channel for
mean/std), applied before the resize where the frames grow (fewer samples to touch: the resize is
linear, so the values agree to float32 rounding), and the last frame split off for "last-image".
Nothing is padded in the batch dimension: a partial batch is simply a smaller batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .bands import DALI_TYPE_NAMES

FRAMES = "frames"
SHAPE = "shape"
TRANSPOSE = "transpose"
FLIP_H = "flip_h"
FLIP_V = "flip_v"
TARGET = "target"

#: DALI CPU threads of a graph on the GPU, unless the user sets ``num_threads``. There the CPU side
#: only reads per-sample shapes and flags: on an H200 with 16 cores, 2 threads ran the region graph
#: at 64,500 samples/s with 1.9 host cores busy, 16 threads at 48,300 with 3.8
#: (bench/results/earlier-design/gpu-variants-h200.json).
GPU_GRAPH_THREADS = 2
#: Inputs that are per-sample arguments (shapes, flags), read on the CPU by design.
ARGUMENT_INPUTS = (SHAPE, TRANSPOSE, FLIP_H, FLIP_V)


@dataclass(frozen=True)
class GraphSpec:
    """What the graph reads and produces. Built from the loader's checked options by
    ``feed.graph_spec`` (the one constructor); tools derive variants with ``dataclasses.replace``.

    Attributes:
        batch_size: samples per batch (the largest batch; smaller ones may be fed).
        dim: (height, width) of the output frames, in pixels.
        channels: C, channels of the frames.
        frames: T, frames per sample.
        input_dtype: uint8, uint16, int16 or float32.
        gain: per channel, the factor of the affine map (1/255 for uint8 normalized, say).
        offset: per channel, added after ``gain`` (-mean/std for standardization).
        interpolation: "linear" (antialiased when shrinking) or "nearest".
        num_classes: K to one-hot encode a single-channel class map (then gain and offset are
            not applied), or 0.
        split_last: True for "last-image": outputs (first T-1 frames, last frame).
        y_shape: the shape of one sample's y: () for one target, (k,) for k, (H, W, C) for the last
            frame (``feed.target_shape``, the one home of that rule).
        box: (h, w) of the frames input, pixels: every box's, or the largest with ``ragged``.
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        num_threads: DALI's CPU threads.
        frames_from_host: a graph on the GPU fed host frames (DALI copies them to the device):
            under TensorFlow's plugin, whose inputs are host tensors.
        antialias: filter when shrinking; False where no frame is ever shrunk (same output, faster).
        ragged: the boxes of a batch may differ in size.
        turns: samples may be transposed (quarter turns).
        flips: samples may be flipped.
        resize: False where every box already has the output size: frames are cast, not resampled.
        affine_first: apply gain and offset before the resize (where it grows the frames).
        resize_minibatch: images (frames) per kernel call of DALI's GPU resize (its
            ``minibatch_size``); None: every frame of a batch in one call (``batch_size * frames``:
            182,571 samples/s on an H200 against 106,372 with DALI's default of 32 frames).
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
    y_shape: tuple[int, ...]
    box: tuple[int, int]
    device: str
    device_id: int | None
    num_threads: int
    frames_from_host: bool = False
    antialias: bool = True
    ragged: bool = False
    turns: bool = False
    flips: bool = False
    resize: bool = True
    affine_first: bool = False
    resize_minibatch: int | None = None

    @property
    def out_channels(self) -> int:
        """C of the output frames."""
        return self.num_classes or self.channels

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names of the graph's external inputs, in feeding order."""
        names = [FRAMES]
        if self.ragged:
            names.append(SHAPE)
        if self.turns:
            names.append(TRANSPOSE)
        if self.flips or self.turns:
            names += [FLIP_H, FLIP_V]
        if not self.split_last:
            names.append(TARGET)
        return tuple(names)

    def frames_shape(self, batch: int | None = None) -> tuple[int | None, ...]:
        """Shape of the "frames" input of a batch of ``batch`` samples: (B, T, h, w, C)."""
        return (batch, self.frames, *self.box, self.channels)

    def output_shapes(self) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        """Shapes of (x, y), the batch dimension None (the last batch of an epoch may be smaller)."""
        h, w = self.dim
        frames = self.frames - 1 if self.split_last else self.frames
        return (None, frames, h, w, self.out_channels), (None, *self.y_shape)


def build_pipeline(spec: GraphSpec, *, prefetch_queue_depth: int = 2, nodes: list | None = None):
    """The DALI pipeline for ``spec``, not yet built. Its inputs are ``spec.inputs``, fed a batch at
    a time (``batch=True``).

    Outputs: x float32 (B, T, H, W, C) and y float32 (B, *spec.y_shape); with ``split_last``,
    x float32 (B, T-1, H, W, C) and y the last frame. ``nodes``, when given, receives the output
    nodes (for :func:`placement`).
    """
    from nvidia.dali import fn, pipeline_def, types

    in_type = getattr(types, DALI_TYPE_NAMES[np.dtype(spec.input_dtype).name])
    affine = not spec.num_classes
    minibatch = {"minibatch_size": spec.resize_minibatch or spec.batch_size * spec.frames} if spec.device == "gpu" \
        else {}

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  prefetch_queue_depth=prefetch_queue_depth, exec_dynamic=True, enable_conditionals=spec.turns)
    def sequences():
        # no_copy: DALI shares the one contiguous buffer of each batch (kept alive by the feeder)
        x = fn.external_source(name=FRAMES, batch=True, layout="FHWC", dtype=in_type, ndim=4, device=spec.device,
                               no_copy=spec.device == "cpu" or not spec.frames_from_host)
        if spec.ragged:
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
        if affine and spec.affine_first:
            x = _affine(x, spec.gain, spec.offset, types, spec.device)
        if not spec.resize:
            x = fn.cast(x, dtype=types.FLOAT)
            if spec.num_classes:
                x = fn.one_hot(fn.squeeze(x, axes=[3]), num_classes=spec.num_classes, axis=-1, dtype=types.FLOAT)
        elif spec.interpolation == "nearest":
            shift = nearest_shift(spec)
            x = fn.resize(x, size=list(spec.dim), interp_type=types.INTERP_NN, antialias=False, roi_relative=True,
                          roi_start=[shift, shift], roi_end=[1 + shift, 1 + shift], **minibatch)
            if spec.num_classes:
                x = fn.one_hot(fn.squeeze(x, axes=[3]), num_classes=spec.num_classes, axis=-1, dtype=types.FLOAT)
            else:
                x = fn.cast(x, dtype=types.FLOAT)
        else:
            x = fn.resize(x, size=list(spec.dim), dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                          antialias=spec.antialias, **minibatch)
        if affine and not spec.affine_first:
            x = _affine(x, spec.gain, spec.offset, types, spec.device)
        if spec.split_last:
            outputs = (x[0 : spec.frames - 1], x[spec.frames - 1])
        else:
            y = fn.external_source(name=TARGET, batch=True, dtype=types.FLOAT, ndim=len(spec.y_shape),
                                   device=spec.device)
            outputs = (x, y)
        if nodes is not None:
            nodes.extend(outputs)
        return outputs

    return sequences()


def nearest_shift(spec: GraphSpec) -> float:
    """The shift of the region the nearest-neighbour resize reads, relative to the frame's size,
    that makes it exact: output pixel o of H takes input floor((o + 0.5) * h / H) on every device.

    Where (o + 0.5) * h / H is a whole number (16 -> 24 rows: o = 1 gives 1.0), the centre falls on
    a pixel edge and DALI's float arithmetic lands on either side of it, one way on the CPU and
    another on the GPU. Otherwise the centre lies at least 1 / (2H) input pixels from an edge. A
    shift of a quarter of that (1 / (4 * max(dim)) pixels at the largest frame side, less at smaller
    ones) moves the edge cases onto the pixel after the edge and no other sample to another pixel."""
    return 1.0 / (4 * max(spec.dim) * max(spec.box))


def sample_list(samples: list[np.ndarray]) -> Any:
    """A DALI CPU tensor list whose samples share the memory of ``samples`` (contiguous (T, h, w, C)
    arrays, of one size or several): DALI's CPU external source reads such a list without a copy."""
    from nvidia.dali.tensors import TensorCPU, TensorListCPU

    return TensorListCPU([TensorCPU(sample, "FHWC") for sample in samples], "FHWC", contiguous=False)


def feed_batch(pipe: Any, inputs: dict[str, Any], *, cuda_stream: Any = None) -> None:
    """Hand one batch's ``inputs`` (name -> a contiguous NumPy or CuPy batch array, or a DALI CPU
    tensor list from :func:`sample_list`, from the feed) to ``pipe``'s external sources, each array
    wrapped as one DALI tensor list sharing its memory (which spares ``feed_input`` its checks of a
    foreign array, about 40 us per input). ``cuda_stream``: the stream device arrays were written on
    (a CuPy stream or its pointer); DALI orders its reads after that stream's work instead of
    waiting on the host."""
    from nvidia.dali.tensors import TensorListCPU, TensorListGPU

    for name, batch in inputs.items():
        if isinstance(batch, np.ndarray):
            pipe.feed_input(name, TensorListCPU(batch))
        elif isinstance(batch, TensorListCPU):
            pipe.feed_input(name, batch)
        else:  # a CuPy array: the frames cut on the GPU, (B, T, h, w, C)
            stream = getattr(cuda_stream, "ptr", cuda_stream)
            pipe.feed_input(name, TensorListGPU(batch, "FHWC", int(batch.device.id)),
                            **({} if stream is None else {"cuda_stream": stream}))


def placement(outputs: list) -> list[tuple[str, str]]:
    """(operator, device) of every operator on the data path to ``outputs`` (DALI output nodes).
    Argument inputs (shapes, flags) and the operators computed from them alone are left out: they
    are per-sample scalars and belong on the CPU."""
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
