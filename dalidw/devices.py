"""Which device the graph runs on: "auto", "cpu", "gpu" or "gpu:N", and who sees a GPU.

"auto" asks DALI alone: the GPU when DALI sees one. TensorFlow is asked only by the paths that run
under it (``dataset()``, ``distributed_dataset()``): a GPU DALI dataset under a TensorFlow without
CUDA fails inside the plugin ("TF device and DALI device mismatch"), so there both must agree
(:func:`dataset_device`), and TensorFlow must leave the GPU's memory to share
(:func:`share_tensorflow_gpu`). Nothing here imports TensorFlow unless asked to.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .errors import DeviceUnavailableError, OptionError, warn

DEVICE_HELP = "Expected `device` to be 'auto', 'cpu', 'gpu' or 'gpu:N'. Received: device={!r}"
TF_GPU_HINT = ("TensorFlow sees no GPU (a TensorFlow built without CUDA): install pip install "
               "'tensorflow[and-cuda]>=2.20,<2.22' (make setup does on a machine with an NVIDIA GPU)")


def gpu_count() -> int:
    """GPUs that DALI sees (0 where CUDA or its driver is absent)."""
    try:
        from nvidia.dali import backend
    except ImportError:  # no DALI at all
        return 0
    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:  # DALI's error where the CUDA driver cannot be loaded
        return 0


def tensorflow_gpu_count() -> int | None:
    """GPUs that TensorFlow sees, or None where TensorFlow is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def dataset_device(device: str, tensorflow_gpus: int, *, device_fixed: bool) -> str:
    """The device of a TensorFlow dataset of a graph on ``device`` when TensorFlow sees
    ``tensorflow_gpus`` GPUs: the graph's own, or the CPU (with a warning) for a GPU graph that
    ``device="auto"`` chose where TensorFlow sees no GPU.

    Raises:
        DeviceUnavailableError: a GPU asked for by name, and TensorFlow sees none.
    """
    if device == "cpu" or tensorflow_gpus > 0:
        return device
    if device_fixed:
        raise DeviceUnavailableError(f"The DALI graph runs on the GPU, but {TF_GPU_HINT}; or build the loader with "
                                     "device='cpu'.")
    warn(f"dalidw: DALI sees a GPU but {TF_GPU_HINT}. The TensorFlow dataset runs its graph on the CPU.")
    return "cpu"


def share_tensorflow_gpu(tf) -> None:
    """Let TensorFlow's GPU memory grow on demand, so that DALI and CuPy (the region store) get their
    share: unset, TensorFlow takes nearly all of it at its first GPU operation. Called when a GPU
    loader is built where TensorFlow is already imported, and before any GPU dataset.

    Raises:
        DeviceUnavailableError: TensorFlow has already taken a GPU's memory (a model was built
            first) without memory growth or a memory limit; the message says what to call first.
    """
    taken = []
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.get_logical_device_configuration(gpu):  # a memory limit (virtual devices): the user's budget
            continue
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # TensorFlow's error: this GPU is initialized, its settings are fixed
            grows = tf.config.experimental.get_memory_growth(gpu) or \
                os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", "").lower() == "true"
            if not grows:
                taken.append(gpu.name)
    if taken:
        raise DeviceUnavailableError(
            f"TensorFlow already holds the memory of {', '.join(taken)} (a model or a tensor was placed there before "
            "the dalidw loader was built), so DALI and the region store would run out of it. Build the loader "
            "first, or call tf.config.experimental.set_memory_growth(gpu, True) for each GPU before anything "
            "else, or set TF_FORCE_GPU_ALLOW_GROWTH=true.")


def share_gpu_if_tensorflow() -> None:
    """:func:`share_tensorflow_gpu` where TensorFlow is already imported (a GPU loader is being
    built); nothing otherwise, and TensorFlow is not imported for it."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        share_tensorflow_gpu(tf)


def _parse(device: object) -> tuple[str, int | None]:
    if not isinstance(device, str):
        raise OptionError(DEVICE_HELP.format(device))
    text = device.strip().lower()
    if text in ("cpu", "auto"):
        return text, None
    if text == "gpu":
        return "gpu", 0
    if text.startswith("gpu:") and text[4:].isdigit():
        return "gpu", int(text[4:])
    raise OptionError(DEVICE_HELP.format(device))


def resolve_device(device: str) -> tuple[str, int | None]:
    """("cpu", None) or ("gpu", device_id) for a device string; "auto" is GPU 0 when DALI sees a GPU.

    Raises:
        OptionError: the string is none of "auto", "cpu", "gpu", "gpu:N".
        DeviceUnavailableError: a GPU was asked for and DALI sees none (or not that one).
    """
    kind, index = _parse(device)
    if kind == "cpu":
        return "cpu", None
    count = gpu_count()
    if kind == "auto":
        return ("gpu", 0) if count else ("cpu", None)
    if index >= count:
        seen = "no GPU" if count == 0 else f"{count} GPU(s), numbered 0 to {count - 1}"
        raise DeviceUnavailableError(
            f"device={device!r} was asked for, but DALI sees {seen} (is the NVIDIA driver visible, "
            "e.g. `docker run --gpus all`?). Use device='cpu' or device='auto' to run on the CPU."
        )
    return "gpu", index
