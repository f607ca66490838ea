"""What the machine has: the memory it can still give, and a description of it for a run's
provenance (CPU, cores, memory, GPUs)."""

from __future__ import annotations

import os
import platform


def available_memory() -> int | None:
    """Bytes of memory the system can still give without swapping (Linux's MemAvailable), or None
    where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def describe_host() -> dict:
    """The machine a run ran on: CPU model, cores, memory, and the GPUs torch sees (if torch is
    installed; it is not imported otherwise)."""
    import importlib.util

    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cpu": _cpu_model() or platform.processor() or None, "cores": os.cpu_count(), "memory_bytes": total_memory()}
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
