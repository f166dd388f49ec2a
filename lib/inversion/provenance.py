"""Where a result came from: commit, device, software, date. Recorded beside every stored result.

The commit comes from git when the code runs in a checkout; on a machine that received a copy of the
working tree without .git (the GPU machine), set INVERSION_COMMIT (and INVERSION_DIRTY) before running.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict:
    """{"commit": sha or "unknown", "dirty": bool or None}."""
    sha = os.environ.get("INVERSION_COMMIT") or _git("rev-parse", "HEAD")
    if "INVERSION_DIRTY" in os.environ:
        dirty = os.environ["INVERSION_DIRTY"] not in ("", "0", "false")
    else:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"commit": sha or "unknown", "dirty": dirty}


def device_name(device: str | torch.device | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: str | torch.device | None = None, **extra) -> dict:
    return {
        **commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
