"""Run folders: one per job, marked while they are written, never silently overwritten.

A run folder holds ``edgeq-run.json`` from its first moment: ``status`` is
``running`` while the job writes, ``complete`` once its last file is in place, and
``failed`` (with the error) when the job stopped early. `edgeq eval` and `edgeq.load`
refuse a run folder that is not complete.

``--force`` replaces only a folder that is an earlier edgeq run (the marker, or only
names an edgeq run writes), never ``.``, the home folder, ``/`` or a parent of the
working directory. The new run is written to a hidden sibling and swapped in only when
it is complete, so a failed run leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.atomic import write_text_atomic

__all__ = [
    "RUN_MARKER",
    "RunFolder",
    "RunFolderError",
    "check_run_complete",
    "open_run",
    "run_status",
    "write_text_atomic",
]

RUN_MARKER = "edgeq-run.json"
_FORMAT = "edgeq-run"
# what an edgeq run writes (a folder holding only these is an earlier run, even one
# written before the marker existed)
_RUN_NAMES = {
    RUN_MARKER,
    "fp32.onnx",
    "quantized.onnx",
    "model",
    "recipe.yaml",
    "metrics.json",
    "per_layer.csv",
    "report.md",
    "report.html",
    "plots",
    "sensitivity.json",
    "sensitivity.md",
    "sensitivity.html",
    "sensitivity.csv",
    "checkpoint.pt",
    "train_metrics.csv",
    "train_metrics.json",
}


class RunFolderError(ValueError):
    """The requested run folder cannot be used (names it and why)."""


def run_status(folder: str | Path) -> str | None:
    """``running``, ``complete`` or ``failed`` from a run folder's marker; None when the
    folder has no (readable) marker."""
    path = Path(folder) / RUN_MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    status = data.get("status")
    return status if isinstance(status, str) else None


def check_run_complete(folder: str | Path) -> None:
    """Raise `RunFolderError` when ``folder`` is a run folder that was cut short or failed
    (a folder without a marker is not a run folder and passes)."""
    status = run_status(folder)
    if status is not None and status != "complete":
        raise RunFolderError(
            f"{folder}: this run is {status}, not complete (it was cut short or failed "
            "before its last file was written); run the job again"
        )


def _write_marker(folder: Path, status: str, **extra: Any) -> None:
    body = {"format": _FORMAT, "status": status, **extra}
    write_text_atomic(folder / RUN_MARKER, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _is_earlier_run(folder: Path) -> bool:
    if run_status(folder) is not None:
        return True
    names = {p.name for p in folder.iterdir()}
    return bool(names) and all(n in _RUN_NAMES or n.endswith(".data") for n in names)


def _refuse_protected(p: Path) -> None:
    """Folders --force must never replace, whatever they hold."""
    real = p.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if real == Path(real.anchor) or real == home or cwd.is_relative_to(real):
        what = (
            "the file system root"
            if real == Path(real.anchor)
            else "your home folder"
            if real == home
            else "the working directory or one of its parents"
        )
        raise RunFolderError(f"--out {p}: refusing to replace {what}; choose a new folder")


def _mkdir(p: Path, *, exist_ok: bool) -> None:
    try:
        p.mkdir(parents=True, exist_ok=exist_ok)
    except PermissionError as e:
        raise RunFolderError(f"{p}: cannot create the run folder (permission denied)") from e
    except FileExistsError:
        raise
    except OSError as e:
        raise RunFolderError(f"{p}: cannot create the run folder ({e.strerror})") from e
    if not os.access(p, os.W_OK):
        raise RunFolderError(f"{p}: the run folder is not writable")


@dataclass
class RunFolder:
    """Where a job writes (``path``) and where its results end up (``final``): the same
    folder, or a hidden sibling of an earlier run that `complete` swaps in."""

    path: Path
    final: Path
    command: str

    def complete(self) -> Path:
        """Mark the run complete and, when it replaces an earlier one, swap it in."""
        _write_marker(self.path, "complete", command=self.command)
        if self.path != self.final:
            old = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.old-"))
            os.rmdir(old)
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
            self.path = self.final
        return self.final

    def fail(self, error: BaseException) -> None:
        """The job stopped early: drop a replacement, or mark the folder failed."""
        if self.path != self.final:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        message = str(error) or type(error).__name__
        with contextlib.suppress(OSError):  # unwritable now: the 'running' marker stays
            _write_marker(self.path, "failed", command=self.command, error=message)


def open_run(
    out: str | Path | None = None,
    *,
    base: str | Path = "runs",
    force: bool = False,
    command: str = "quantize",
) -> RunFolder:
    """Create the folder a job writes into, marked ``running``.

    ``out`` given: a new or empty folder is used as is; one that holds an earlier edgeq
    run needs ``force`` (the new run then goes to a hidden sibling until complete); any
    other non-empty folder, a file, or a protected folder is refused. Otherwise the next
    free ``base/NNN`` is created.

    Raises:
        RunFolderError: naming the folder and the reason.
    """
    if out is None:
        folder = _next_numbered(Path(base))
        _write_marker(folder, "running", command=command)
        return RunFolder(folder, folder, command)
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise RunFolderError(f"--out {p}: is a file, not a folder")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            raise RunFolderError(
                f"{p} already holds results; pass --force to replace them or choose another --out"
            )
        _refuse_protected(p)
        if not _is_earlier_run(p):
            raise RunFolderError(
                f"--out {p}: holds files that are not an edgeq run; --force replaces only an "
                "earlier run folder. Choose another --out"
            )
        if not os.access(p.parent, os.W_OK):
            raise RunFolderError(f"{p.parent}: not writable (needed to replace {p})")
        tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.new-"))
        _write_marker(tmp, "running", command=command)
        return RunFolder(tmp, p, command)
    _mkdir(p, exist_ok=True)
    _write_marker(p, "running", command=command)
    return RunFolder(p, p, command)


def _next_numbered(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root}: is a file, not a folder for runs")
    _mkdir(root, exist_ok=True)
    taken = [int(d.name) for d in root.iterdir() if d.is_dir() and d.name.isdigit()]
    n = max(taken, default=0) + 1
    while True:
        p = root / f"{n:03d}"
        try:
            p.mkdir()  # exclusive: two runs never share a folder
            return p
        except FileExistsError:
            n += 1
