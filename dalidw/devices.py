"""Which device the graph runs on: "auto", "cpu", "gpu" or "gpu:N", and who sees a GPU.

DALI and TensorFlow must agree: a GPU DALI dataset under a TensorFlow without CUDA fails inside
the plugin ("TF device and DALI device mismatch"), so both sides are asked.
"""

from __future__ import annotations

import contextlib
import importlib.util

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


def check_tensorflow_gpu(tf) -> None:
    """Raise DeviceUnavailableError unless TensorFlow sees a GPU; let TensorFlow's memory grow on
    demand (it takes almost all of it otherwise, before DALI allocates)."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise DeviceUnavailableError(f"The DALI graph runs on the GPU, but {TF_GPU_HINT}; "
                                     "or build the loader with device='cpu'.")
    for gpu in gpus:  # once TensorFlow is initialized its memory settings are fixed: set them before, then
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.experimental.set_memory_growth(gpu, True)


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
    """("cpu", None) or ("gpu", device_id) for a device string.

    "auto" is the GPU only when DALI sees one and TensorFlow, where installed, sees one too; it
    warns when DALI sees a GPU that TensorFlow does not.

    Raises:
        ValueError: the string is none of "auto", "cpu", "gpu", "gpu:N".
        DeviceUnavailableError: a GPU was asked for and DALI sees none (or not that one).
    """
    kind, index = _parse(device)
    if kind == "cpu":
        return "cpu", None
    count = gpu_count()
    if kind == "auto":
        if count == 0:
            return "cpu", None
        if tensorflow_gpu_count() == 0:
            warn(f"dalidw: DALI sees a GPU but {TF_GPU_HINT}. device='auto' runs on the CPU.")
            return "cpu", None
        return "gpu", 0
    if index >= count:
        seen = "no GPU" if count == 0 else f"{count} GPU(s), numbered 0 to {count - 1}"
        raise DeviceUnavailableError(
            f"device={device!r} was asked for, but DALI sees {seen} (is the NVIDIA driver visible, "
            "e.g. `docker run --gpus all`?). Use device='cpu' or device='auto' to run on the CPU."
        )
    return "gpu", index
