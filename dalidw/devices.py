"""Which device DALI runs on: "auto", "cpu", "gpu" or "gpu:N"."""

from __future__ import annotations

from .errors import DeviceUnavailableError


def gpu_count() -> int:
    """GPUs that DALI sees (0 where CUDA or its driver is absent)."""
    try:
        from nvidia.dali import backend

        return int(backend.GetCUDADeviceCount())
    except Exception:
        return 0


def resolve_device(device: str) -> tuple[str, int | None]:
    """("cpu", None) or ("gpu", device_id) for a device string.

    Raises:
        ValueError: the string is none of "auto", "cpu", "gpu", "gpu:N".
        DeviceUnavailableError: a GPU was asked for and DALI sees none (or not that one).
    """
    if not isinstance(device, str):
        raise ValueError(f"Expected `device` to be 'auto', 'cpu', 'gpu' or 'gpu:N'. Received: device={device!r}")
    text = device.strip().lower()
    if text == "cpu":
        return "cpu", None
    if text == "auto":
        return ("gpu", 0) if gpu_count() > 0 else ("cpu", None)
    if text == "gpu" or text.startswith("gpu:"):
        index_text = text[4:] if text.startswith("gpu:") else "0"
        if not index_text.isdigit():
            raise ValueError(f"Expected `device` to be 'auto', 'cpu', 'gpu' or 'gpu:N'. Received: device={device!r}")
        index = int(index_text)
        count = gpu_count()
        if index >= count:
            seen = "no GPU" if count == 0 else f"{count} GPU(s), numbered 0 to {count - 1}"
            raise DeviceUnavailableError(
                f"device={device!r} was asked for, but DALI sees {seen} (is the NVIDIA driver visible, "
                "e.g. `docker run --gpus all`?). Use device='cpu' or device='auto' to run on the CPU."
            )
        return "gpu", index
    raise ValueError(f"Expected `device` to be 'auto', 'cpu', 'gpu' or 'gpu:N'. Received: device={device!r}")
