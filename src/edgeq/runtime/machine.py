"""What machine a measurement ran on: the facts that decide integer speed on a CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the instruction sets ONNX Runtime's integer kernels choose between on x86 and ARM
_ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def machine_info() -> dict[str, object]:
    """CPU model, core count and the integer instruction sets present (Linux reads
    /proc/cpuinfo; elsewhere what `platform` knows)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "integer_isa": [f for f in _ISA_FLAGS if f in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
