"""The torch thread count every `moe-interp` command runs with: an explicit count, the environment's,
or one that fits the CPUs this process may use and the machine's load now."""

import os
from pathlib import Path

__all__ = ["choose_threads", "set_threads"]


def choose_threads() -> tuple[int, str]:
    """A torch thread count for this machine now, and why.

    `TORCH_NUM_THREADS` or `OMP_NUM_THREADS` when set; else the CPUs this process may run on
    (affinity and cgroup quota) minus the 1-minute load average, rounded, at least 1. More
    threads than idle cores makes torch's parallel kernels wait on each other, which on a busy
    machine is several times slower than one thread.

    ```python
    >>> import os
    >>> from moe_interp.experiments.demo import choose_threads
    >>> os.environ["OMP_NUM_THREADS"] = "1"; os.environ.pop("TORCH_NUM_THREADS", None) and None
    >>> choose_threads()
    (1, 'OMP_NUM_THREADS=1')

    ```
    """
    for name in ("TORCH_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value), f"{name}={value}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = min(cpus, _cgroup_cpus() or cpus)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cpus, round(cpus - load)))
    return threads, f"{cpus} CPUs, load average {load:.1f}; choose with --threads N or TORCH_NUM_THREADS"


def _cgroup_cpus() -> int | None:
    """CPUs allowed by a cgroup v2 quota (`cpu.max`), rounded up; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def set_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's thread count: `threads`, or `choose_threads()` when None. Returns (count, why).

    ```python
    >>> from moe_interp.experiments.demo import set_threads
    >>> set_threads(2)
    (2, 'asked for')

    ```
    """
    import torch

    why = "asked for"
    if threads is None:
        threads, why = choose_threads()
    torch.set_num_threads(threads)
    return threads, why
