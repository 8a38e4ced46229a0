"""Run folders: marked while written, replaced only when they are earlier runs, swapped in
only when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeq.runs import RUN_MARKER, RunFolderError, check_run_complete, open_run, run_status


def _earlier_run(path: Path) -> Path:
    run = open_run(path)
    (run.path / "metrics.json").write_text("{}")
    run.complete()
    return path


def test_numbered_runs_are_marked_running_then_complete(tmp_path):
    run = open_run(base=tmp_path / "runs")
    assert run.path == tmp_path / "runs" / "001"
    assert run_status(run.path) == "running"
    with pytest.raises(RunFolderError, match="running, not complete"):
        check_run_complete(run.path)
    assert run.complete() == run.path
    assert run_status(run.path) == "complete"
    check_run_complete(run.path)
    assert open_run(base=tmp_path / "runs").path.name == "002"


def test_a_failed_run_is_marked_failed_with_its_error(tmp_path):
    run = open_run(tmp_path / "out")
    run.fail(ValueError("calibration data is empty"))
    marker = json.loads((tmp_path / "out" / RUN_MARKER).read_text())
    assert marker["status"] == "failed"
    assert marker["error"] == "calibration data is empty"
    with pytest.raises(RunFolderError, match="this run is failed"):
        check_run_complete(tmp_path / "out")


def test_a_folder_of_user_files_is_never_replaced(tmp_path):
    notes = tmp_path / "my_notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="already holds results; pass --force"):
        open_run(notes)
    with pytest.raises(RunFolderError, match="not an edgeq run; --force replaces only"):
        open_run(notes, force=True)
    assert (notes / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize("which", ["cwd", "parent_of_cwd", "home", "root"])
def test_force_refuses_protected_folders(tmp_path, monkeypatch, which):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    # make every candidate look like an earlier run, so only the protection refuses
    target = {
        "cwd": Path("."),
        "parent_of_cwd": Path(".."),
        "home": tmp_path / "home",
        "root": Path("/"),
    }[which]
    if which != "root":
        (target / "metrics.json").write_text("{}")
    before = sorted(os.listdir(target))
    with pytest.raises(RunFolderError, match="refusing to replace"):
        open_run(target, force=True)
    assert sorted(os.listdir(target)) == before


def test_force_swaps_the_new_run_in_only_when_complete(tmp_path):
    out = _earlier_run(tmp_path / "run")
    (out / "metrics.json").write_text('{"old": true}')
    run = open_run(out, force=True)
    assert run.path != out
    assert run.path.parent == out.parent
    (run.path / "metrics.json").write_text('{"new": true}')
    # until complete, the old run is what is there
    assert json.loads((out / "metrics.json").read_text()) == {"old": True}
    assert run.complete() == out
    assert json.loads((out / "metrics.json").read_text()) == {"new": True}
    assert run_status(out) == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no leftovers


def test_a_failed_replacement_leaves_the_old_run_intact(tmp_path):
    out = _earlier_run(tmp_path / "run")
    run = open_run(out, force=True)
    (run.path / "metrics.json").write_text('{"half": true}')
    run.fail(KeyboardInterrupt())
    assert json.loads((out / "metrics.json").read_text()) == {}
    assert run_status(out) == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_legacy_run_without_a_marker_can_be_replaced(tmp_path):
    legacy = tmp_path / "demo"
    (legacy / "model").mkdir(parents=True)
    for name in ("fp32.onnx", "recipe.yaml", "metrics.json"):
        (legacy / name).write_text("x")
    run = open_run(legacy, force=True)
    assert run.complete() == legacy
    assert not (legacy / "fp32.onnx").exists()


def test_out_that_is_a_file_or_unwritable_is_a_clear_error(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        open_run(f)
    with pytest.raises(RunFolderError, match="cannot create the run folder"):
        open_run(f / "run")  # a file where a parent folder should be
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere: the permission case cannot be staged")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="permission denied"):
            open_run(locked / "run")
    finally:
        locked.chmod(0o700)
