"""Where a result came from: commit, device, software, date. Recorded beside every stored result.

The commit comes from git when the code runs in a checkout; on a machine that received a copy of the
working tree without .git (the GPU machine), set INVERSION_COMMIT (and INVERSION_DIRTY) before running.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str, cwd: str | os.PathLike = REPO) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit(repo: str | os.PathLike = REPO) -> dict:
    """{"commit": sha or "unknown", "dirty": bool or None}.

    ``dirty``: whether a tracked file outside ``cache/`` differs from the commit. The committed stage results
    under ``cache/`` are data, not code: a stage that rewrites one (a result imported without its checkpoint
    is recomputed when a later stage needs the checkpoint) does not change what the next stage runs, so it
    must not mark every later result as computed from uncommitted code."""
    sha = os.environ.get("INVERSION_COMMIT") or _git("rev-parse", "HEAD", cwd=repo)
    if "INVERSION_DIRTY" in os.environ:
        dirty = os.environ["INVERSION_DIRTY"] not in ("", "0", "false")
    else:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)cache", cwd=repo)
        dirty = None if status is None else bool(status)
    return {"commit": sha or "unknown", "dirty": dirty}


@functools.lru_cache(maxsize=None)
def committed_files(folder: str) -> frozenset[Path]:
    """The files under ``folder`` that the repository tracks (``git ls-files``), as resolved paths: a stage
    result among them came with the repository (``cache/quick``, ``cache/paper``) rather than being computed
    in this checkout. Empty outside a git checkout. Read once per folder and process (a book build does
    not commit)."""
    folder = Path(folder).resolve()
    listed = _git("ls-files", "-z", cwd=folder) if folder.is_dir() else None  # paths relative to folder
    return frozenset((folder / name).resolve() for name in (listed or "").split("\0") if name)


def committed_result(result_dir: str | os.PathLike) -> bool:
    """Whether the stage result in ``result_dir`` (its result.json) came with the repository: one listing of
    the parameter set's cache folder (the result's parent) per process."""
    result_dir = Path(result_dir).resolve()
    return result_dir / "result.json" in committed_files(str(result_dir.parent))


def device_name(device: str | torch.device | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}, {torch.get_num_threads()} threads"


# The widest vector instructions a CPU offers, widest first: they pick the kernels MKL and oneDNN run, so they
# decide a float result's last bits (the FC classifier of the quick set came out 81.58 %, 81.26 % and 81.82 %
# on three CPUs that all call themselves "AMD EPYC" or "Intel Xeon") and whether bf16 is fast (3x slower than
# fp32 without avx512_bf16 on an AMD EPYC of family 23: bench/results/train_step_cpu-amd-family23.md).
CPU_FEATURES = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "avx")


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor's block of /proc/cpuinfo's text (the rest repeat it)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_description(cpuinfo: str) -> str | None:
    """"<model name> (family F model M, <widest feature>)" from the text of /proc/cpuinfo; None without a model
    name. The model name alone does not tell these CPUs apart (a virtual machine shows "AMD EPYC" for
    every generation), the family/model numbers and the vector features do."""
    fields = _first_processor(cpuinfo)
    name = fields.get("model name")
    if not name:
        return None
    flags = set(fields.get("flags", "").split())
    details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields and "model" in fields else []
    details += [f.upper() for f in CPU_FEATURES if f in flags][:1]
    return f"{name} ({', '.join(details)})" if details else name


def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (/proc/cpuinfo); empty where they cannot be read (not Linux)."""
    return frozenset(_first_processor(_read_cpuinfo()).get("flags", "").split())


def _cpu_model() -> str:
    return cpu_description(_read_cpuinfo()) or platform.processor() or platform.machine()


def provenance(device: str | torch.device | None = None, **extra) -> dict:
    return {
        **commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
