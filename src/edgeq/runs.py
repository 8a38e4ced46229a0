"""Run folders: one per job, numbered, never silently overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeq.atomic import write_text_atomic

__all__ = ["RunFolderError", "new_run_dir", "write_text_atomic"]


class RunFolderError(ValueError):
    """The requested run folder already holds results."""


def new_run_dir(
    out: str | Path | None = None, *, base: str | Path = "runs", force: bool = False
) -> Path:
    """Create the folder a job writes into.

    ``out`` given: used as is; if it exists and is not empty, ``force`` is needed (its
    contents are then replaced). Otherwise the next free ``base/NNN`` is created.
    """
    if out is not None:
        p = Path(out)
        if p.exists() and any(p.iterdir()):
            if not force:
                raise RunFolderError(
                    f"{p} already holds results; pass --force to replace them or choose "
                    "another --out"
                )
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        return p
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(d.name) for d in root.iterdir() if d.is_dir() and d.name.isdigit()]
    n = max(taken, default=0) + 1
    while True:
        p = root / f"{n:03d}"
        try:
            p.mkdir()  # exclusive: two runs never share a folder
            return p
        except FileExistsError:
            n += 1
