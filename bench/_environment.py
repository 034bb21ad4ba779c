"""What a benchmark figure was measured on: the torch build, the CPU, the threads and the machine's load.

Speed ratios move with the torch build (its kernels), the CPU capability torch dispatches
to (AVX2, AVX512, ...) and whatever else the machine was running, so every bench script
writes this record beside its figures (``"environment"`` in its JSON).
"""

from __future__ import annotations

import os
import platform

import pyro
import torch

__all__ = ["environment"]


def environment(threads: int | None = None, load_before: float | None = None) -> dict:
    """The record: versions, CPU capability, thread count, CPU count and 1/5/15-minute load averages now.

    Args:
        threads: The intra-op threads the figures used (default: ``torch.get_num_threads()``).
        load_before: The 1-minute load average when the measurement started, if taken.
    """
    record = {
        "torch": torch.__version__, "pyro": pyro.__version__, "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
        "platform": platform.platform(), "threads": threads if threads is not None else torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_1_5_15min": list(os.getloadavg()),
    }
    if load_before is not None:
        record["load_avg_1min_before"] = load_before
    return record
