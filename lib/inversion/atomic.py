"""The one way this library writes a file: to a temporary file beside it, then an atomic rename.

A reader (another process, a resumed run, a kill at any moment) therefore sees either the old file or the
complete new one, never half of it. Every writer of a file that matters goes through ``atomic_write``:
datasets as they arrive (``inversion.data``), checkpoints and run configs (``inversion.training``), stage
results (``inversion.pipeline.cache``, which also renames whole result directories into place).

    atomic_write(path, lambda f: f.write(data))          # bytes
    atomic_write_text(path, json.dumps(obj))
    atomic_torch_save(state_dict, path)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], suffix: str = ".tmp") -> Path:
    """Call ``write(f)`` on a new temporary file in ``path``'s directory, then rename it to ``path``.

    If ``write`` raises (a failed checksum, a full disk, a kill), the temporary file is removed and ``path``
    is left as it was. The file gets the permissions a plain ``open(path, "w")`` would give it (mkstemp
    alone would make it 0600). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, written atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
