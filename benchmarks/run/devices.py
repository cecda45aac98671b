"""Where a job runs: the one reading of a device request (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

The request is a configuration value (``device``, also set by ``--device``); it is checked here,
once, and turned into a ``torch.device`` that the job, the local worker slots and the Ray
backend pass on.
"""
from __future__ import annotations

import re

import torch

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_REQUEST = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def parse_device(value, what: str = "device") -> tuple[str, int | None]:
    """``value`` (None means auto) as (``auto`` | ``cpu`` | ``cuda``, GPU index or None); a
    ValueError naming ``what`` for anything else."""
    text = "auto" if value is None else str(value)
    m = _REQUEST.fullmatch(text)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"{what} must be {DEVICE_FORMS}, got {value!r}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def is_device_request(value) -> bool:
    try:
        parse_device(value)
    except ValueError:
        return False
    return True


def resolve_device(value, gpu_count: int | None = None) -> torch.device:
    """The device a request means on this machine: ``auto`` is the GPU when one is visible, else
    the CPU; ``cuda`` and ``cuda:N`` need that GPU to be visible (a ValueError otherwise).
    ``gpu_count`` stands for ``torch.cuda.device_count()``."""
    kind, index = parse_device(value)
    if kind == "cpu":
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
    if gpus == 0:
        if kind == "auto":
            return torch.device("cpu")
        raise ValueError(f"device {value!r} requested but no CUDA GPU is visible")
    if index is not None and index >= gpus:
        raise ValueError(f"device {value!r} requested but only {gpus} GPU(s) are visible (cuda:0..cuda:{gpus - 1})")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
