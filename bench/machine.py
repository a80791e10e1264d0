"""What the benchmarks record about the machine and how they time a run (shared by bench_*.py)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: instruction sets that decide which int8/bf16 kernels onnxruntime and OpenVINO can use
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")


def cpu_flags() -> dict[str, Any]:
    """CPU model, core count and whether each of FLAGS is present (from /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    return {"model": model or platform.processor(), "cores": os.cpu_count(),
            **{f: f in flags for f in FLAGS}}


def timed(fn: Callable[[], int]) -> dict[str, float]:
    """Run fn (returns the number of images) -> images, seconds, images/s, CPU ms per image."""
    c0, t0 = time.process_time(), time.perf_counter()
    n = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
            "cpu_ms_per_image": round(1000 * cpu / max(n, 1), 2)}
