"""Bad-input probes of the edgeq command (issue 11), run against one or more code versions.

    .venv/bin/python benchmarks/bad_input_probes.py \\
        --code before=/tmp/edgeq-before/src --code after=/work/main/src \\
        --out benchmarks/results/bad_input_probes

Each ``--code NAME=SRC_DIR`` is a ``src`` folder holding the ``edgeq`` package; it is put
first on PYTHONPATH (ahead of an editable install) for every subprocess. The fixtures are
built in a temporary folder: a tiny factory model (conv + relu + pool + linear, 3
classes) in a module written there, 12 generated PNG images in three class folders, and,
for each code version separately (formats may differ), a quantize run of the tiny model
whose run folder and artifact the tampering probes copy and change.

Every probe is one ``python -m edgeq.cli ...`` subprocess in a fresh working directory,
120 s timeout, address space capped (``--mem-cap-gib``, default 10: the machine is
shared; a probe that needs more fails as it would on a smaller machine). Recorded: the
exit code (a negative code is the signal that killed it), the last line of stderr (160
characters), whether stderr holds a traceback, wall seconds, the child's peak RSS (from
``wait4``), the probe's own side-effect checks (a file deleted, a payload's marker file
written, a file outside the folder read: its access time moved), and any file added,
removed or changed in the temporary folder outside the probe's run folder.

Commands are the same for every version, except that the artifact-validation probes add
``--trust-model-file`` where the version has the flag (without it the current code
refuses a factory-sourced artifact before it reads any field). Quantize runs use a
recipe with ``bench: {batch: [1], rounds: 2}`` to keep them short, merged under the
probe's own recipe. Writes OUT.json and OUT.md (``--render-only`` rewrites OUT.md
from OUT.json; ``--only ID ...`` runs some probes). About 9 minutes for two versions on
2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TIMEOUT_S = 120
FAST = {"bench": {"batch": [1], "rounds": 2}}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
OLD_ATIME = 1_000_000_000  # 2001: relatime moves it on the next read

MODELS_PY = '''"""Tiny models for the bad-input probes (written by bad_input_probes.py)."""
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


class TwoOutputs(Tiny):
    def forward(self, x):
        y = torch.flatten(self.pool(self.relu(self.conv(x))), 1)
        return self.fc(y), y


def two_outputs():
    torch.manual_seed(0)
    return TwoOutputs().eval()


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, a, b):
        y = torch.relu(self.conv(a + b))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def two_inputs():
    torch.manual_seed(0)
    return TwoInputs().eval()


def exits_quietly():
    raise SystemExit(0)


class Custom:
    """A class a checkpoint pickles (torch.load with weights_only refuses it)."""

    def __init__(self):
        self.payload = "custom"
'''

PAYLOAD_PY = '''"""An attacker's factory: writes a marker file, then returns a working model."""
from pathlib import Path

MARKER = Path({marker!r})


def run():
    MARKER.write_text("payload ran\\n")
    from bip_models import tiny

    return tiny()
'''


# ---------------------------------------------------------------- fixtures


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_constant_png(path: Path, width: int, height: int, value: int = 128) -> None:
    """A valid 8-bit greyscale PNG of one colour, compressed row by row (a few hundred KB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * width
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _random_png(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="PNG")


@dataclass
class Fixtures:
    root: Path
    mods: Path
    images: Path
    marker: Path
    pt2: Path
    custom_ckpt: Path
    big_png: Path
    runs: dict[str, Path] = field(default_factory=dict)
    trust_flag: dict[str, bool] = field(default_factory=dict)
    edgeq_file: dict[str, str] = field(default_factory=dict)


def build_shared(root: Path) -> Fixtures:
    mods = root / "mods"
    mods.mkdir()
    marker = root / "PAYLOAD_RAN.txt"
    (mods / "bip_models.py").write_text(MODELS_PY)
    (mods / "bip_payload.py").write_text(PAYLOAD_PY.format(marker=str(marker)))
    images = root / "images"
    for c in range(3):
        (images / f"class_{c}").mkdir(parents=True)
        for i in range(4):
            _random_png(images / f"class_{c}" / f"{i}.png", seed=10 * c + i)

    sys.path.insert(0, str(mods))
    import bip_models  # type: ignore[import-not-found]
    import torch

    pt2 = root / "tiny.pt2"
    ep = torch.export.export(bip_models.tiny(), (torch.zeros(1, 3, 224, 224),))
    torch.export.save(ep, str(pt2))
    custom_ckpt = root / "custom.pth"
    torch.save(
        {"state_dict": bip_models.tiny().state_dict(), "extra": bip_models.Custom()}, custom_ckpt
    )
    big_png = root / "big_15000x15000.png"
    write_constant_png(big_png, 15000, 15000)
    return Fixtures(root, mods, images, marker, pt2, custom_ckpt, big_png)


def child_env(src: str, fx: Fixtures) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{src}{os.pathsep}{fx.mods}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def build_version(name: str, src: str, fx: Fixtures, mem_cap: int) -> None:
    env = child_env(src, fx)
    where = subprocess.run(
        [sys.executable, "-c", "import edgeq; print(edgeq.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(Path(src).resolve()):
        raise SystemExit(f"{name}: edgeq imported from {where}, not from {src}")
    fx.edgeq_file[name] = where
    helptext = subprocess.run(
        [sys.executable, "-m", "edgeq.cli", "eval", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fx.trust_flag[name] = "--trust-model-file" in helptext
    base = fx.root / "fixtures" / name
    base.mkdir(parents=True)
    recipe = base / "fast.yaml"
    recipe.write_text(json.dumps(FAST))
    run = base / "run"
    cmd = ["quantize", "bip_models:tiny", "--calib", str(fx.images), "--out", str(run)]
    res = run_cli([*cmd, "--config", str(recipe), "--quiet"], base, env, mem_cap)
    if res["rc"] != 0 or not (run / "model" / "edgeq.json").is_file():
        raise SystemExit(f"{name}: the fixture quantize run failed: {res}")
    fx.runs[name] = run


# ---------------------------------------------------------------- running


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    mem_cap: int,
    on_poll: Callable[[subprocess.Popen[bytes], float], None] | None = None,
    paths: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """One ``python -m edgeq.cli`` subprocess; per-child peak RSS from wait4.

    ``paths`` (working folder, fixture root): written ``./`` and ``$T`` in the messages.
    """

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if mem_cap:
            resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeq.cli", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=limits,  # the harness starts no threads
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.monotonic() - start
            if elapsed > TIMEOUT_S:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            if on_poll is not None:
                on_poll(proc, elapsed)
            time.sleep(0.05)
        seconds = time.monotonic() - start
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if paths is not None:
        for text_name in ("stdout", "stderr"):
            text = stdout if text_name == "stdout" else stderr
            text = text.replace(str(paths[0]) + os.sep, "./").replace(str(paths[1]), "$T")
            stdout, stderr = (text, stderr) if text_name == "stdout" else (stdout, text)
    stderr = ANSI.sub("", stderr)
    err_lines = [line for line in stderr.splitlines() if line.strip()]
    out_lines = [line for line in stdout.splitlines() if line.strip()]
    with contextlib.suppress(ValueError):
        result = json.loads(stdout)
        if isinstance(result, dict):
            out_lines.append(
                "JSON result: "
                + ", ".join(
                    f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str)
                )[:140]
            )
    return {
        "rc": rc,
        "timed_out": timed_out,
        "stderr_last": err_lines[-1].strip()[:160] if err_lines else "",
        "stdout_last": out_lines[-1].strip()[:160] if out_lines else "",
        "stderr_tail": err_lines[-6:],
        "traceback": "Traceback (most recent call last)" in stderr,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "_stdout": stdout,
        "_stderr": stderr,
    }


def snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file under root (size, mtime) outside the skipped folders and caches."""
    skip_s = [str(p.resolve()) for p in skip]
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d != "__pycache__"
            and not any(
                os.path.join(dirpath, d) == s or os.path.join(dirpath, d).startswith(s + os.sep)
                for s in skip_s
            )
        ]
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skip_s):
            continue
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def diff_snapshots(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]], root: Path
) -> list[str]:
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    changes = [f"+{rel(p)}" for p in sorted(b.keys() - a.keys())]
    changes += [f"-{rel(p)}" for p in sorted(a.keys() - b.keys())]
    changes += [f"~{rel(p)}" for p in sorted(a.keys() & b.keys()) if a[p] != b[p]]
    return changes


# ---------------------------------------------------------------- probes


@dataclass
class Ctx:
    name: str
    fx: Fixtures
    cwd: Path
    env: dict[str, str]

    @property
    def run(self) -> Path:
        return self.fx.runs[self.name]

    @property
    def onnx(self) -> str:
        return str(self.run / "quantized.onnx")

    def trust(self) -> list[str]:
        return ["--trust-model-file"] if self.fx.trust_flag[self.name] else []

    def recipe(self, body: dict[str, Any]) -> str:
        merged = json.loads(json.dumps(FAST))
        for k, v in body.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        path = self.cwd / "recipe.yaml"
        path.write_text(json.dumps(merged) + "\n")  # JSON is YAML
        return str(path)

    def quantize(self, *extra: str, model: str = "bip_models:tiny", out: str = "run") -> list[str]:
        return ["quantize", model, "--calib", str(self.fx.images), "--out", out, *extra]

    def copy_run(self) -> Path:
        dst = self.cwd / "run"
        shutil.copytree(self.run, dst)
        return dst

    def decoys(self) -> list[Path]:
        """A readable PNG at each place '../../etc/passwd' may resolve to, atime set old."""
        paths = [self.cwd / "etc" / "passwd", self.cwd.parent / "etc" / "passwd"]
        paths.append(self.cwd.parent.parent / "etc" / "passwd")
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            _random_png(p, seed=99, size=(32, 32))
            os.utime(p, (OLD_ATIME, time.time()))
        return paths


def decoy_read(paths: list[Path], cwd: Path) -> str:
    """The decoys read during the probe ('no' when none), relative to the working folder."""
    read = [p for p in paths if p.exists() and os.stat(p).st_atime > OLD_ATIME + 1]
    return ", ".join(os.path.relpath(p, cwd) for p in read) or "no"


def _tamper_meta(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta_path = run / "model" / "edgeq.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=True) + "\n")


def _labeled(ctx: Ctx, rows: list[tuple[str, str]], bom: bool = False) -> str:
    folder = ctx.cwd / "data"
    (folder / "images").mkdir(parents=True)
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        _random_png(folder / "images" / name, seed=50 + i, size=(32, 32))
    text = "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows)
    (folder / "labels.csv").write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return str(folder)


def _image_folder(ctx: Ctx, odd: Path | None = None, odd_name: str = "odd.png") -> str:
    folder = ctx.cwd / "data"
    for c in range(3):
        (folder / f"class_{c}").mkdir(parents=True)
        _random_png(folder / f"class_{c}" / "ok.png", seed=70 + c)
    if odd is not None:
        shutil.copy(odd, folder / "class_0" / odd_name)
    return str(folder)


# A probe: id, one-line description, setup(ctx) -> (cli args, run folder or None,
# check(ctx, result) -> side effects dict, optional poll hook).
Setup = Callable[[Ctx], tuple[list[str], Path | None, Callable[[Ctx, dict], dict] | None, Any]]


@dataclass
class Probe:
    id: str
    desc: str
    setup: Setup


def p_artifact_abort(ctx: Ctx):
    run = ctx.copy_run()
    _tamper_meta(run, lambda m: m.__setitem__("source", {"kind": "factory", "ref": "os:abort"}))
    return ["eval", str(run), "--data", str(ctx.fx.images)], None, None, None


def p_artifact_payload(ctx: Ctx):
    run = ctx.copy_run()
    src = {"kind": "factory", "ref": "bip_payload:run"}
    _tamper_meta(run, lambda m: m.__setitem__("source", src))

    def check(ctx: Ctx, res: dict) -> dict:
        ran = ctx.fx.marker.exists()
        ctx.fx.marker.unlink(missing_ok=True)
        return {"payload marker written": ran}

    return ["eval", str(run), "--data", str(ctx.fx.images)], None, check, None


def p_torchscript_passwd(trusted: bool) -> Setup:
    def setup(ctx: Ctx):
        run = ctx.copy_run()
        decoys = ctx.decoys()  # identical bytes: one sha256 fits wherever the path leads
        src = {
            "kind": "torchscript",
            "path": "../../etc/passwd",
            "input_shape": [1, 3, 224, 224],
            "sha256": hashlib.sha256(decoys[0].read_bytes()).hexdigest(),
        }
        _tamper_meta(run, lambda m: m.__setitem__("source", src))
        for p in decoys:  # reading them for the digest moved their access time
            os.utime(p, (OLD_ATIME, p.stat().st_mtime))
        args = ["eval", str(run), "--data", str(ctx.fx.images)]
        if trusted:
            args += ctx.trust()
        check = lambda c, r: {"file outside read": decoy_read(decoys, c.cwd)}  # noqa: E731
        return args, None, check, None

    return setup


def p_systemexit(ctx: Ctx):
    return ctx.quantize(model="bip_models:exits_quietly"), ctx.cwd / "run", _no_run, None


def _no_run(ctx: Ctx, res: dict) -> dict:
    return {"run folder left": (ctx.cwd / "run").exists()}


def p_pt2(ctx: Ctx):
    return ctx.quantize(model=str(ctx.fx.pt2)), ctx.cwd / "run", _no_run, None


def p_force_notes(ctx: Ctx):
    notes = ctx.cwd / "my_notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep\n")
    check = lambda c, r: {"user file deleted": not (notes / "ideas.txt").exists()}  # noqa: E731
    return ctx.quantize("--force", out="my_notes"), notes, check, None


def p_force_dot(ctx: Ctx):
    (ctx.cwd / "ideas.txt").write_text("keep\n")

    def check(c: Ctx, r: dict) -> dict:
        return {
            "user file deleted": not (c.cwd / "ideas.txt").exists(),
            "entries now": len(os.listdir(c.cwd)),
        }

    return ctx.quantize("--force", out="."), ctx.cwd, check, None


def p_force_failed(ctx: Ctx):
    run = ctx.copy_run()
    before = (run / "metrics.json").read_bytes()
    bad = ctx.cwd / "badcalib"
    shutil.copytree(ctx.fx.images, bad)
    (bad / "class_0" / "9_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")

    def check(c: Ctx, r: dict) -> dict:
        m = run / "metrics.json"
        return {"old run kept": m.is_file() and m.read_bytes() == before}

    args = ["quantize", "bip_models:tiny", "--calib", str(bad), "--out", "run", "--force"]
    return [*args, "--config", ctx.recipe({})], run, check, None


def p_wide_png(ctx: Ctx):
    wide = ctx.cwd / "wide.png"
    Image.new("RGB", (40000, 1), (90, 120, 200)).save(wide)
    size = wide.stat().st_size
    data = _image_folder(ctx, wide, "wide.png")
    return ["eval", ctx.onnx, "--data", data], None, lambda c, r: {"png bytes": size}, None


def p_huge_png(ctx: Ctx):
    data = _image_folder(ctx, ctx.fx.big_png, "big.png")
    return ["eval", ctx.onnx, "--data", data], None, None, None


def p_custom_pickle(ctx: Ctx):
    def check(c: Ctx, r: dict) -> dict:
        return {"suggests weights_only=False": "weights_only=False" in r["_stderr"]}

    args = ctx.quantize("--weights", str(ctx.fx.custom_ckpt), "--config", ctx.recipe({}))
    return args, ctx.cwd / "run", check, None


def p_recipe(body: dict[str, Any], with_eval: bool = False, onnx_check: bool = False) -> Setup:
    def setup(ctx: Ctx):
        extra = ["--eval", str(ctx.fx.images)] if with_eval else []
        args = ctx.quantize(*extra, "--config", ctx.recipe(body))

        def check(c: Ctx, r: dict) -> dict:
            out: dict[str, Any] = {"run folder": (c.cwd / "run").exists()}
            if onnx_check:
                out["quantized.onnx written"] = (c.cwd / "run" / "quantized.onnx").exists()
            return out

        return args, ctx.cwd / "run", check, None

    return setup


def p_bench(*extra: str) -> Setup:
    def setup(ctx: Ctx):
        return ["bench", ctx.onnx, *extra], None, None, None

    return setup


def p_artifact_field(change: Callable[[dict[str, Any]], None]) -> Setup:
    def setup(ctx: Ctx):
        run = ctx.copy_run()
        _tamper_meta(run, change)
        return ["eval", str(run), "--data", str(ctx.fx.images), *ctx.trust()], None, None, None

    return setup


def p_nan_scale(ctx: Ctx):
    from safetensors.torch import load_file, save_file

    run = ctx.copy_run()
    path = run / "model" / "model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if k.endswith("weight_scale"))
    t = tensors[key].clone()
    t.view(-1)[0] = float("nan")
    tensors[key] = t
    save_file(tensors, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _tamper_meta(run, lambda m: m.__setitem__("tensors_sha256", digest))

    def check(c: Ctx, r: dict) -> dict:
        return {"tensor": key}

    return ["eval", str(run), "--data", str(ctx.fx.images), *ctx.trust()], None, check, None


def p_labels(rows: list[tuple[str, str]], bom: bool = False, decoy: bool = False) -> Setup:
    def setup(ctx: Ctx):
        decoys = ctx.decoys() if decoy else []
        data = _labeled(ctx, rows, bom)

        def check(c: Ctx, r: dict) -> dict:
            out: dict[str, Any] = {}
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out["images evaluated"] = json.loads(r["_stdout"])["images"]
            if decoy:
                out["file outside read"] = decoy_read(decoys, c.cwd)
            return out

        return ["eval", ctx.onnx, "--data", data, "--json"], None, check, None

    return setup


def p_model(factory: str) -> Setup:
    def setup(ctx: Ctx):
        args = ctx.quantize("--config", ctx.recipe({}), model=f"bip_models:{factory}")
        return args, ctx.cwd / "run", _no_run, None

    return setup


def p_out_file(ctx: Ctx):
    f = ctx.cwd / "out.txt"
    f.write_text("x\n")
    check = lambda c, r: {"file changed": not f.is_file() or f.read_text() != "x\n"}  # noqa: E731
    return ctx.quantize("--config", ctx.recipe({}), out="out.txt"), None, check, None


def p_not_onnx(cmd: str) -> Setup:
    def setup(ctx: Ctx):
        junk = ctx.cwd / "model.onnx"
        junk.write_text("not a model\n")
        if cmd == "bench":
            return ["bench", str(junk), "--batch", "1", "--rounds", "2"], None, None, None
        return ["eval", str(junk), "--data", str(ctx.fx.images)], None, None, None

    return setup


def p_compare(content: str) -> Setup:
    def setup(ctx: Ctx):
        bad = ctx.cwd / "bad"
        bad.mkdir()
        (bad / "metrics.json").write_text(content)
        return ["compare", str(ctx.run), str(bad)], None, None, None

    return setup


def p_sigterm(ctx: Ctx):
    out = ctx.cwd / "run"
    state: dict[str, Any] = {"sent_at_s": None}

    def poll(proc: subprocess.Popen[bytes], elapsed: float) -> None:
        if state["sent_at_s"] is None and ((out / "fp32.onnx").exists() or elapsed > 60):
            time.sleep(0.5)  # well inside the job
            proc.send_signal(signal.SIGTERM)
            state["sent_at_s"] = round(elapsed + 0.5, 1)

    def check(c: Ctx, r: dict) -> dict:
        marker = out / "edgeq-run.json"
        status = json.loads(marker.read_text()).get("status") if marker.is_file() else None
        return {
            "SIGTERM at s": state["sent_at_s"],
            "run status": status,
            "metrics.json": (out / "metrics.json").exists(),
            "files left in run": sum(1 for f in out.rglob("*") if f.is_file())
            if out.is_dir()
            else 0,
        }

    args = ctx.quantize("--config", ctx.recipe({"bench": {"rounds": 100000}}))
    return args, out, check, poll


def _set_layer(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        name = sorted(meta["layers"])[0]
        meta["layers"][name][key] = value

    return change


PROBES = [
    Probe("artifact-os-abort", "artifact source factory os:abort; eval RUN", p_artifact_abort),
    Probe(
        "artifact-payload",
        "artifact source factory = a module writing a marker file; eval RUN",
        p_artifact_payload,
    ),
    Probe(
        "artifact-torchscript-path",
        "artifact source torchscript, path ../../etc/passwd; eval RUN",
        p_torchscript_passwd(trusted=False),
    ),
    Probe(
        "artifact-torchscript-path-trusted",
        "the same, with --trust-model-file where the version has it",
        p_torchscript_passwd(trusted=True),
    ),
    Probe("factory-systemexit", "factory raising SystemExit(0); quantize", p_systemexit),
    Probe("pt2-untrusted", "a .pt2 (torch.export.save) to quantize, no trust flag", p_pt2),
    Probe("force-user-folder", "--out my_notes --force, my_notes holds a user file", p_force_notes),
    Probe("force-dot", "--out . --force in a folder with a user file", p_force_dot),
    Probe(
        "force-failed-run",
        "--force over an earlier run; new run fails (corrupt image in --calib)",
        p_force_failed,
    ),
    Probe("png-40000x1", "eval, a 40000x1 PNG in the data folder", p_wide_png),
    Probe("png-15000x15000", "eval, a 15000x15000 constant PNG (225 MP)", p_huge_png),
    Probe("weights-custom-pickle", "--weights checkpoint pickling a custom class", p_custom_pickle),
    Probe("recipe-kmeans", "weight.scheme: kmeans", p_recipe({"weight": {"scheme": "kmeans"}})),
    Probe(
        "recipe-weight-bits-3",
        "weight.bits: 3 (static)",
        p_recipe({"weight": {"bits": 3}}, onnx_check=True),
    ),
    Probe("recipe-act-bits-16", "activation.bits: 16", p_recipe({"activation": {"bits": 16}})),
    Probe(
        "recipe-override-no-match",
        "override match: nothing.* (matches no layer)",
        p_recipe({"overrides": [{"match": "nothing.*", "float": True}]}),
    ),
    Probe(
        "recipe-match-5",
        "override match: 5",
        p_recipe({"overrides": [{"match": 5, "bits": 4}]}),
    ),
    Probe(
        "recipe-group-size-5",
        "weight_only, per_group group_size 5 (8 input channels)",
        p_recipe(
            {
                "mode": "weight_only",
                "weight": {"bits": 4, "granularity": "per_group", "group_size": 5},
            }
        ),
    ),
    Probe("recipe-threads-abc", "bench.threads: abc", p_recipe({"bench": {"threads": "abc"}})),
    Probe(
        "recipe-eval-batch-0",
        "evaluation.batch_size: 0 (with --eval)",
        p_recipe({"evaluation": {"batch_size": 0}}, with_eval=True),
    ),
    Probe(
        "recipe-eval-images--3",
        "evaluation.images: -3 (with --eval)",
        p_recipe({"evaluation": {"images": -3}}, with_eval=True),
    ),
    Probe("bench-batch-0--1", "bench quantized.onnx --batch 0 -1", p_bench("--batch", "0", "-1")),
    Probe(
        "bench-rounds-0",
        "bench quantized.onnx --rounds 0",
        p_bench("--batch", "1", "--rounds", "0"),
    ),
    Probe(
        "artifact-bits-0",
        "artifact JSON: first layer bits 0; eval RUN (trusted)",
        p_artifact_field(_set_layer("bits", 0)),
    ),
    Probe(
        "artifact-huge-shape",
        "artifact JSON: shape [1000000, 1000000, 1000]; eval RUN (trusted)",
        p_artifact_field(_set_layer("shape", [1000000, 1000000, 1000])),
    ),
    Probe(
        "artifact-nan-scale",
        "model.safetensors: NaN in a weight scale, sha256 rewritten; eval RUN (trusted)",
        p_nan_scale,
    ),
    Probe(
        "labels-bom",
        "labels.csv with a UTF-8 BOM (legitimate); eval",
        p_labels([("a.png", "0"), ("b.png", "1"), ("c.png", "2")], bom=True),
    ),
    Probe(
        "labels-class-7",
        "labels.csv label 7, model has 3 classes; eval",
        p_labels([("a.png", "0"), ("b.png", "7")]),
    ),
    Probe(
        "labels-duplicate",
        "labels.csv with a duplicate row; eval",
        p_labels([("a.png", "0"), ("a.png", "1"), ("b.png", "2")]),
    ),
    Probe(
        "labels-passwd",
        "labels.csv row ../../etc/passwd (a readable PNG there); eval",
        p_labels([("a.png", "0"), ("../../etc/passwd", "1")], decoy=True),
    ),
    Probe("model-tuple", "factory model returning a tuple; quantize", p_model("two_outputs")),
    Probe("model-two-inputs", "factory model with two inputs; quantize", p_model("two_inputs")),
    Probe("out-is-file", "--out naming an existing file", p_out_file),
    Probe("bench-not-onnx", "bench of a text file named model.onnx", p_not_onnx("bench")),
    Probe("eval-not-onnx", "eval of a text file named model.onnx", p_not_onnx("eval")),
    Probe("compare-empty", "compare RUN with an empty metrics.json", p_compare("")),
    Probe("compare-corrupt", "compare RUN with metrics.json '{not json'", p_compare("{not json")),
    Probe("sigterm", "SIGTERM during quantize (after fp32.onnx is written)", p_sigterm),
]


def run_probe(probe: Probe, name: str, src: str, fx: Fixtures, mem_cap: int) -> dict[str, Any]:
    cwd = fx.root / "work" / name / probe.id
    cwd.mkdir(parents=True)
    ctx = Ctx(name, fx, cwd, child_env(src, fx))
    args, run_folder, check, poll = probe.setup(ctx)
    skip = [run_folder] if run_folder is not None else []
    fx.marker.unlink(missing_ok=True)
    before = snapshot(fx.root, skip)
    res = run_cli(args, cwd, ctx.env, mem_cap, on_poll=poll, paths=(cwd, fx.root))
    side = check(ctx, res) if check is not None else {}
    after = snapshot(fx.root, skip)
    if fx.marker.exists():  # a payload that ran where no check expected it
        side["payload marker written"] = True
        fx.marker.unlink()
    res.pop("_stdout")
    res.pop("_stderr")
    res["side_effects"] = side
    res["changed_outside_run_folder"] = diff_snapshots(before, after, fx.root)
    res["command"] = "edgeq " + " ".join(_show(a, cwd, fx.root) for a in args)
    return res


def _show(arg: str, cwd: Path, root: Path) -> str:
    if arg.startswith(str(cwd) + os.sep):
        return os.path.relpath(arg, cwd)
    return arg.replace(str(root), "$T")


# ---------------------------------------------------------------- report


def _git(src: str) -> dict[str, Any]:
    def g(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", src, *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = g("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": g("rev-parse", "--short", "HEAD"),
        "subject": g("log", "-1", "--format=%s")[:100],
        "dirty": bool(dirty),
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rc(rc: int, timed_out: bool) -> str:
    if timed_out:
        return f"timeout ({TIMEOUT_S} s)"
    if rc < 0:
        try:
            return f"{signal.Signals(-rc).name} ({rc})"
        except ValueError:
            return str(rc)
    return str(rc)


def _cell(r: dict[str, Any]) -> str:
    msg = (
        ANSI.sub("", r["stderr_last"])
        or (r["stdout_last"] and "stdout: " + r["stdout_last"])
        or "(no output)"
    )
    parts = [f"**{_rc(r['rc'], r['timed_out'])}**", msg.replace("|", "\\|").replace("`", "'")]
    if r["traceback"]:
        parts.append("*(traceback)*")
    return " ".join(parts)


def _side(r: dict[str, Any], probe_id: str, mem_cap_gib: float) -> str:
    bits = [f"{k}: {_fmt(v)}" for k, v in r["side_effects"].items()]
    if any("MemoryError" in line for line in r["stderr_tail"]):
        bits.append(f"MemoryError under the {mem_cap_gib:g} GiB address-space cap")
    if probe_id.startswith("png-"):
        bits.append(f"{r['seconds']:.1f} s, {r['peak_rss_mb']} MB")
    if r["changed_outside_run_folder"]:
        ch = r["changed_outside_run_folder"]
        bits.append("outside: " + ", ".join(ch[:3]) + (f" (+{len(ch) - 3})" if len(ch) > 3 else ""))
    return "; ".join(bits) or "-"


def _fmt(v: Any) -> str:
    return (
        {True: "yes", False: "no", None: "-"}.get(v, str(v))
        if isinstance(v, bool | None)
        else str(v)
    )


def markdown(data: dict[str, Any]) -> str:
    names = list(data["versions"])
    lines = [
        "# Bad-input probes (issue 11)",
        "",
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores; Python "
        f"{data['machine']['python']}; address space capped at {data['mem_cap_gib']} GiB per "
        f"probe; timeout {TIMEOUT_S} s.",
        "",
    ]
    for n in names:
        v = data["versions"][n]
        dirty = " (with uncommitted changes)" if v["git"]["dirty"] else ""
        lines.append(
            f"- {n}: `{v['src']}`, commit {v['git']['commit']}{dirty}: {v['git']['subject']}"
        )
    lines += [
        "",
        "Command: `" + data["command"] + "`",
        "",
        "Each cell: exit code (a signal name when a signal ended the process), the last "
        "line of stderr (or of stdout when stderr is empty), *(traceback)* when stderr "
        "holds one. Side effects: the probe's own checks, seconds and peak RSS for the "
        "image probes, and files changed in the fixture folder outside the probe's run "
        "folder (+ added, - removed, ~ changed).",
        "",
        "| probe | " + " | ".join(names) + " | side effects " + " / ".join(names) + " |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for p in data["probes"]:
        cells = [_cell(p["results"][n]) for n in names]
        sides = " / ".join(
            f"{n}: {_side(p['results'][n], p['id'], data['mem_cap_gib'])}" for n in names
        )
        lines.append(f"| `{p['id']}`: {p['description']} | " + " | ".join(cells) + f" | {sides} |")
    lines += [
        "",
        "Commands of the last version (run in the probe's working folder; $T is the "
        "temporary fixture folder, FAST = the short-bench recipe):",
        "",
    ]
    for p in data["probes"]:
        cmd = p["results"][names[-1]]["command"]
        lines.append(f"- `{p['id']}`: `{cmd}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", default=[], help="NAME=SRC_DIR (repeatable)")
    ap.add_argument("--out", default="benchmarks/results/bad_input_probes")
    ap.add_argument("--only", nargs="*", help="probe ids to run (default: all)")
    ap.add_argument("--mem-cap-gib", type=float, default=10.0, help="0: no cap")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = ap.parse_args()
    if args.render_only:
        out = Path(args.out)
        out.with_suffix(".md").write_text(
            markdown(json.loads(out.with_suffix(".json").read_text()))
        )
        print(f"wrote {out.with_suffix('.md')}")
        return
    if not args.code:
        ap.error("--code NAME=SRC_DIR is required (at least one)")
    versions = {}
    for spec in args.code:
        name, sep, src = spec.partition("=")
        if not sep or not Path(src, "edgeq").is_dir():
            ap.error(f"--code {spec!r}: expected NAME=SRC_DIR with SRC_DIR/edgeq")
        versions[name] = str(Path(src).resolve())
    probes = [p for p in PROBES if not args.only or p.id in args.only]
    mem_cap = int(args.mem_cap_gib * 2**30)
    root = Path(tempfile.mkdtemp(prefix="edgeq-probes-"))
    try:
        print(f"fixtures in {root}", flush=True)
        fx = build_shared(root)
        for name, src in versions.items():
            t = time.monotonic()
            build_version(name, src, fx, mem_cap)
            print(f"{name}: fixture run in {time.monotonic() - t:.1f} s", flush=True)
        results: list[dict[str, Any]] = []
        for p in probes:
            row = {"id": p.id, "description": p.desc, "results": {}}
            for name, src in versions.items():
                r = run_probe(p, name, src, fx, mem_cap)
                row["results"][name] = r
                print(
                    f"{p.id:36s} {name:8s} rc={_rc(r['rc'], r['timed_out']):12s} "
                    f"{r['seconds']:6.1f}s  {r['stderr_last'][:90]}",
                    flush=True,
                )
            results.append(row)
        data = {
            "command": " ".join(
                [".venv/bin/python", "benchmarks/bad_input_probes.py", *sys.argv[1:]]
            ),
            "machine": {
                "cpu": _cpu(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "mem_cap_gib": args.mem_cap_gib,
            "timeout_s": TIMEOUT_S,
            "versions": {
                n: {
                    "src": s,
                    "edgeq_file": fx.edgeq_file[n],
                    "git": _git(s),
                    "trust_flag": fx.trust_flag[n],
                }
                for n, s in versions.items()
            },
            "probes": results,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(data))
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
