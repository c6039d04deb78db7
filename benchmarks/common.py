"""What every benchmark records about the machine, and the model sizes they share; imports nothing heavy, so that a
script runs where only torch is installed (a GPU host)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# the debug preset's model, and a mid-size variant of it (18.1M AR parameters), as replacements of its fields
PRESET_MODELS: dict[str, dict[str, int]] = {
    "debug": {"max_seq_len": 512},
    "mid": {"n_layers": 6, "d_model": 384, "n_heads": 6, "d_ff": 1536, "max_seq_len": 512},
}


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1), "cpu_model": model,
            "python": platform.python_version()}
