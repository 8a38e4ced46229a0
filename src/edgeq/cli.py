"""The `edgeq` command: verbs with --flags; every verb also takes --config recipe.yaml.

    edgeq quantize MODEL --calib DATA [--eval DATA] [--weights FILE] [--config FILE]
                         [--out DIR] [--force] [--dry-run]
    edgeq train MODEL --data DATA [--calib DATA] [--eval DATA] [--weights FILE]
                      [--teacher MODEL [--teacher-weights FILE]] [--epochs N]
                      [--config FILE] [--out DIR] [--force | --resume] [--dry-run]
    edgeq eval MODEL_OR_ONNX --data DATA [--ref MODEL_OR_ONNX] [--weights FILE]
    edgeq bench ONNX [--batch N ...] [--threads N] [--rounds N]
    edgeq compare RUN_OR_MODEL ...
    edgeq sensitivity MODEL --calib DATA --eval DATA [--images N]
    edgeq demo [--eval DATA] [--out DIR]

Exit codes: 0 success, 1 user error (one line on stderr), 2 internal error, 3 the run
finished but its export check failed (ONNX Runtime disagrees with the simulation),
130 interrupted (SIGINT), 143 terminated (SIGTERM). A run cut short leaves its folder
marked incomplete (`edgeq.runs`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from edgeq.recipe import RecipeError, dump, load_recipe, resolve
from edgeq.report.document import fmt as _fmt


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgeq.artifact import ArtifactError
    from edgeq.data.images import DataError
    from edgeq.evaluate.classification import NotAClassifierError
    from edgeq.export.onnx_qdq import ExportError
    from edgeq.graph.capture import CaptureError
    from edgeq.graph.states import StateError
    from edgeq.jobs.inputs import JobInputError
    from edgeq.models import ModelLoadError, PretrainedWeightsMissing
    from edgeq.quant import QuantInputError, SpecError
    from edgeq.runs import RunFolderError
    from edgeq.runtime import OnnxModelError
    from edgeq.train.distill import DistillationError
    from edgeq.train.engine import TrainingError

    return (
        UserError,
        RecipeError,
        ArtifactError,
        DataError,
        ExportError,
        CaptureError,
        ModelLoadError,
        PretrainedWeightsMissing,
        QuantInputError,
        SpecError,
        RunFolderError,
        JobInputError,
        OnnxModelError,
        TrainingError,  # a NaN loss, a checkpoint of another model (naming the step, file)
        DistillationError,
        StateError,  # a learned scale that cannot be deployed
        NotAClassifierError,  # top-1 asked of a model with several outputs
        FileNotFoundError,
    )


class _Out:
    def __init__(self, quiet: bool, as_json: bool) -> None:
        self.quiet = quiet or as_json
        self.as_json = as_json

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def result(self, text: str, data: Any) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, default=str))
        else:
            print(text)


_PREPROCESS_FLAGS = ("resize", "crop", "mean", "std", "interpolation", "channel_order")


def _recipe(
    args: argparse.Namespace,
    flags: dict[str, Any],
    *,
    train: bool = False,
    config: str | Path | None = None,
) -> dict[str, Any]:
    path = config or getattr(args, "config", None)
    base = load_recipe(path) if path else {}
    for key in _PREPROCESS_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            flags = {**flags, f"preprocess.{key}": value}
    return resolve(base, flags, train=train)


def _load_needs_trust(out: Path, model: str) -> bool:
    """An artifact rebuilt by importing a factory or reading a model file needs the
    opt-in; one that records its architecture (or names torchvision) does not."""
    try:
        meta = json.loads((out / "model" / "edgeq.json").read_text())
    except (OSError, ValueError):
        meta = {}
    recorded = isinstance(meta, dict) and meta.get("architecture") is not None
    return not recorded and not model.startswith("torchvision:")


def _summary(metrics: dict[str, Any], out: Path, extra: list[str] | None = None) -> str:
    acc = metrics["accuracy"]
    lines = [f"run folder: {out}", ""]
    trust = ", trust_model_file=True" if _load_needs_trust(out, str(metrics["model"])) else ""
    rows = [
        ("FP32 (ONNX Runtime)", "fp32_onnx"),
        ("quantized (ONNX Runtime)", "quantized_onnx"),
        ("simulation (PyTorch)", "simulation"),
    ]
    lines.append(f"{'model':<28} {'top-1':>7} {'agree':>7} {'size MB':>8}")
    sizes = {
        "fp32_onnx": metrics["bytes"].get("fp32_onnx"),
        "quantized_onnx": metrics["bytes"].get("quantized_onnx"),
        "simulation": metrics["bytes"].get("artifact"),
    }
    for label, key in rows:
        if key not in acc:
            continue
        m = acc[key]
        size = sizes[key]
        lines.append(
            f"{label:<28} {_fmt(m.get('top1')):>7} "
            f"{_fmt(m.get('agreement', 1.0 if key == 'fp32_onnx' else None)):>7} "
            f"{_fmt(size / 1e6 if size else None, '.2f'):>8}"
        )
    for b, v in metrics.get("latency", {}).items():
        lines.append(
            f"latency batch {b}: FP32 {v['fp32_ms']:.2f} ms, quantized "
            f"{v['quantized_ms']:.2f} ms (ratio {v['ratio']:.2f})"
        )
    ec = metrics.get("export_check")
    if ec:
        lines.append(
            f"export check (ONNX Runtime vs simulation): top-1 agreement "
            f"{ec['top1_agreement']:.3f}, max |diff| {ec['max_abs_logit_difference']:.3g} "
            f"-> {'PASS' if ec['pass'] else 'FAIL'}"
        )
    lines += extra or []
    lines += [
        "",
        "next:",
        f"  open {out / 'report.html'}",
        f"  edgeq bench {out / 'quantized.onnx'} --batch 1 32",
        f"  edgeq compare {out} <another run>",
        f"  python -c \"import edgeq; m = edgeq.load('{out}'{trust})\"",
    ]
    return "\n".join(lines)


def cmd_quantize(args: argparse.Namespace, out: _Out) -> int:
    recipe = _recipe(
        args,
        {
            "calibration.images": args.calib_images,
            "mode": args.mode,
            "target": args.target,
            "capture": args.capture,
        },
    )
    if args.dry_run:
        print(dump(recipe), end="")
        return 0
    weights = Path(args.weights) if args.weights else None
    return _run_quantize_job(args, out, args.model, weights, recipe)


def _in_run_folder(
    args: argparse.Namespace, command: str, work: Any, run: Any = None
) -> tuple[Any, Path]:
    """Run ``work(folder)`` in a new run folder (`edgeq.runs.open_run`), or in ``run``
    (a `RunFolder` that --resume continues): marked complete (and swapped in for the
    run it replaces) on success, marked failed or dropped on any error or interruption."""
    from edgeq.runs import open_run

    if run is None:
        run = open_run(args.out, force=args.force, command=command)
    try:
        result = work(run.path)
    except BaseException as e:
        run.fail(e)
        raise
    return result, run.complete()


def _run_quantize_job(
    args: argparse.Namespace, out: _Out, model: str, weights: Path | None, recipe: dict[str, Any]
) -> int:
    from edgeq.jobs.inputs import prepare_inputs
    from edgeq.jobs.quantize import QuantizeJob, run_quantize

    job = QuantizeJob(
        model=model,
        recipe=recipe,
        weights=weights,
        calib=Path(args.calib) if args.calib else None,
        eval=Path(args.eval) if args.eval else None,
        progress=not out.quiet,
        log=out.log,
        trust_model_file=getattr(args, "trust_model_file", False),
    )
    inputs = prepare_inputs(job)  # every check before the run folder exists
    metrics, run_dir = _in_run_folder(args, "quantize", lambda d: run_quantize(job, inputs, d))
    out.result(_summary(metrics, run_dir), metrics)
    return _export_check_code(args, metrics, run_dir)


def _export_check_code(args: argparse.Namespace, metrics: dict[str, Any], run_dir: Path) -> int:
    """3 (with one line) when ONNX Runtime disagrees with the simulation, else 0."""
    check = metrics.get("export_check")
    if check is not None and not check["pass"]:
        print(
            f"edgeq {args.command}: export check FAILED: ONNX Runtime agrees with the "
            f"simulation on {check['top1_agreement']:.3f} of top-1 predictions (needs 0.995); "
            f"the run folder {run_dir} is kept for inspection",
            file=sys.stderr,
        )
        return 3
    return 0


def cmd_train(args: argparse.Namespace, out: _Out) -> int:
    from edgeq.jobs.quantize import used_recipe
    from edgeq.jobs.train import (
        TrainJob,
        final_scores,
        prepare_train,
        resume_folder,
        run_train,
        train_model,
    )
    from edgeq.train.distributed import is_main_process

    if args.teacher_weights and not args.teacher:
        raise UserError("--teacher-weights needs --teacher (without one the FP32 model teaches)")
    config = args.config
    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out RUN, the run folder to continue")
        if args.force:
            raise UserError("--resume continues --out in place and --force replaces it: pass one")
        recorded = Path(args.out) / "recipe.yaml"
        if config is None and recorded.is_file():
            config = recorded  # the run's own recipe, flags (--epochs) over it
    recipe = _recipe(args, {"train.epochs": args.epochs}, train=True, config=config)
    if args.dry_run:
        print(dump(recipe), end="")
        return 0
    main_rank = is_main_process()  # torchrun: rank 0 writes and logs, the others train
    if not main_rank:
        out = _Out(quiet=True, as_json=False)
    job = TrainJob(
        model=args.model,
        recipe=recipe,
        data=Path(args.data),
        weights=Path(args.weights) if args.weights else None,
        calib=Path(args.calib) if args.calib else None,
        eval=Path(args.eval) if args.eval else None,
        teacher=args.teacher,
        teacher_weights=Path(args.teacher_weights) if args.teacher_weights else None,
        resume=args.resume,
        progress=not out.quiet,
        log=out.log,
        trust_model_file=args.trust_model_file,
    )
    inputs = prepare_train(job)  # every check before the run folder exists
    run = None
    if args.resume:
        run = resume_folder(Path(args.out), used_recipe(recipe, inputs.base.preprocess))
    if not main_rank:
        train_model(job, inputs, None if run is None else run.path, evaluate=False)
        return 0
    metrics, run_dir = _in_run_folder(args, "train", lambda d: run_train(job, inputs, d), run)
    out.result(_summary(metrics, run_dir, final_scores(metrics)), metrics)
    return _export_check_code(args, metrics, run_dir)


def cmd_demo(args: argparse.Namespace, out: _Out) -> int:
    from edgeq.models import mobilenet_v2_weights_path

    recipe = _recipe(args, {"calibration.images": args.calib_images})
    if args.dry_run:
        print(dump(recipe), end="")
        return 0
    out.log(
        "edgeq demo: W8A8 post-training quantization of torchvision's pretrained "
        "MobileNetV2, offline"
    )
    return _run_quantize_job(
        args, out, "torchvision:mobilenet_v2", mobilenet_v2_weights_path(), recipe
    )


def cmd_sensitivity(args: argparse.Namespace, out: _Out) -> int:
    from edgeq.jobs.inputs import prepare_inputs
    from edgeq.jobs.sensitivity import SensitivityJob, run_sensitivity

    recipe = _recipe(args, {"calibration.images": args.calib_images})
    if args.images < 1:
        raise UserError(f"--images {args.images}: must be a positive integer")
    job = SensitivityJob(
        model=args.model,
        calib=Path(args.calib),
        eval=Path(args.eval),
        recipe=recipe,
        weights=Path(args.weights) if args.weights else None,
        images=args.images,
        progress=not out.quiet,
        log=out.log,
        trust_model_file=args.trust_model_file,
    )
    inputs = prepare_inputs(job)
    res, run_dir = _in_run_folder(args, "sensitivity", lambda d: run_sensitivity(job, inputs, d))
    lines = [f"{'layer':<30} {'SQNR gain dB':>12} {'alone SQNR dB':>13}"]
    for r in res["layers"][:10]:
        lines.append(
            f"{r['layer']:<30} {r['sqnr_gain_db']:>12.2f} {r['only_quantized_sqnr_db']:>13.1f}"
        )
    lines += [
        "",
        "suggested overrides (keep in float):",
        dump({"overrides": res["suggested_overrides"]}).rstrip(),
        "",
        f"report: {run_dir / 'sensitivity.html'}",
    ]
    out.result("\n".join(lines), res)
    return 0


def _recorded_preprocess(folder: Path) -> Any:
    """The preprocessing a run folder's model was calibrated with (None: not recorded)."""
    from edgeq.data import Preprocess

    recipe_path = folder / "recipe.yaml"
    if not recipe_path.is_file():
        return None
    recorded = load_recipe(recipe_path).get("preprocess")
    if not isinstance(recorded, dict) or not recorded:
        return None
    try:
        return Preprocess.from_dict({**Preprocess.imagenet().to_dict(), **recorded})
    except ValueError as e:
        raise UserError(f"{recipe_path}: preprocess: {e}") from e


def _predictor_for(ref: str, weights: str | None, trust: bool) -> tuple[Any, str, Any, str]:
    """(predictor, name, the preprocessing the model declares or its run recorded (or
    None), where that came from)."""
    from edgeq.evaluate.classification import as_predictor
    from edgeq.runs import check_run_complete

    p = Path(ref)
    if p.suffix == ".onnx" or p.is_dir():
        folder = p if p.is_dir() else p.parent
        check_run_complete(folder)
        recorded = _recorded_preprocess(folder)
        origin = f"recorded in {folder / 'recipe.yaml'}"
        if p.is_dir():
            import edgeq

            qm = edgeq.load(p, trust_model_file=trust)
            return as_predictor(qm), f"edgeq artifact {p}", recorded, origin
        return as_predictor(p), str(p), recorded, origin
    import edgeq
    from edgeq.models.preprocessing import declared_preprocess

    model = edgeq.load_model(ref, weights, trust_model_file=trust)
    w = Path(weights) if weights else None
    return as_predictor(model), ref, declared_preprocess(model, weights=w), "declared by the model"


def cmd_eval(args: argparse.Namespace, out: _Out) -> int:
    from edgeq.data import Preprocess, load_labeled_images
    from edgeq.evaluate.classification import predict, score

    recipe = _recipe(args, {})
    pred, name, base, origin = _predictor_for(args.model, args.weights, args.trust_model_file)
    ref_pred = None
    if args.ref:
        ref_pred, _, ref_base, ref_origin = _predictor_for(
            args.ref, args.ref_weights, args.trust_model_file
        )
        if base is None:
            base, origin = ref_base, ref_origin
    if base is None:
        base, origin = Preprocess.imagenet(), "ImageNet default"
    given = recipe["preprocess"]
    preprocess = Preprocess.from_dict({**base.to_dict(), **given}) if given else base
    out.log(f"preprocessing ({origin}): {preprocess.describe()}")
    images = load_labeled_images(args.data, preprocess)
    n = recipe["evaluation"]["images"] or len(images)
    x, y = images.tensors(range(min(n, len(images))))
    bs = recipe["evaluation"]["batch_size"]
    batches = [x[i : i + bs] for i in range(0, len(x), bs)]
    logits = predict(pred, batches, progress=None if out.quiet else "evaluating")
    images.check_labels(int(logits.shape[1]))
    ref = None
    if ref_pred is not None:
        ref = predict(ref_pred, batches, progress=None if out.quiet else "reference")
    res = score(logits, y.numpy(), ref)
    res_out = {"model": name, "images": len(x), "preprocess": preprocess.to_dict(), **res}
    text = "\n".join(
        [f"{name} on {len(x)} images of {args.data}"]
        + [f"  {k:<10} {_fmt(v, '.4f')}" for k, v in res.items()]
    )
    out.result(text, res_out)
    return 0


def _bench_models(refs: list[str]) -> list[Path]:
    """One or two ONNX files, or a run folder (its FP32 and quantized ONNX)."""
    from edgeq.runs import check_run_complete

    if len(refs) == 1 and Path(refs[0]).is_dir():
        folder = Path(refs[0])
        check_run_complete(folder)
        pair = [folder / "fp32.onnx", folder / "quantized.onnx"]
        if not all(p.is_file() for p in pair):
            raise UserError(f"{folder}: not a run folder with fp32.onnx and quantized.onnx")
        return pair
    if len(refs) > 2:
        raise UserError(f"bench takes one or two ONNX files (or a run folder), got {len(refs)}")
    return [Path(r) for r in refs]


def cmd_bench(args: argparse.Namespace, out: _Out) -> int:
    from edgeq.runtime import bench

    recipe = _recipe(
        args,
        {"bench.threads": args.threads, "bench.rounds": args.rounds, "bench.batch": args.batch},
    )
    paths = _bench_models(args.onnx)
    b = recipe["bench"]
    if len(paths) == 2:
        return _bench_pair(paths, b, out)
    p = paths[0]
    results = [
        bench(p, batch=n, threads=b["threads"], rounds=b["rounds"], progress=not out.quiet)
        for n in b["batch"]
    ]
    lines = [
        f"{p} (ONNX Runtime, CPU, {b['threads']} threads, {b['rounds']} rounds)",
        f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'inputs/s':>9} {'peak MB':>8}",
    ]
    for r in results:
        peak = r["peak_rss_bytes"]
        lines.append(
            f"{r['batch']:>5} {r['p50_ms']:>9.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
            f"{r['throughput_per_s']:>9.1f} {_fmt(peak / 1e6 if peak else None, '.0f'):>8}"
        )
    out.result("\n".join(lines), results)
    return 0


def _bench_pair(paths: list[Path], b: dict[str, Any], out: _Out) -> int:
    from edgeq.runtime import bench_pair, machine_info

    base, other = (str(p) for p in paths)
    out.log(f"timing both models in turns at batch {', '.join(map(str, b['batch']))}")
    rows = bench_pair(base, other, batches=b["batch"], threads=b["threads"], rounds=b["rounds"])
    cpu = machine_info().get("cpu", "unknown CPU")
    lines = [
        f"{other} vs {base} (ONNX Runtime, {cpu}, {b['threads']} threads, "
        f"median of {b['rounds']} runs each, in turns)",
        f"{'batch':>5} {'base ms':>9} {'other ms':>9} {'ratio':>7}",
    ] + [
        f"{r['batch']:>5} {r['base_ms']:>9.2f} {r['other_ms']:>9.2f} {r['ratio']:>7.3f}"
        for r in rows
    ]
    out.result("\n".join(lines), {"base": base, "other": other, "results": rows})
    return 0


def cmd_compare(args: argparse.Namespace, out: _Out) -> int:
    rows = []
    for ref in args.runs:
        p = Path(ref)
        mpath = p / "metrics.json" if p.is_dir() else p
        if not mpath.is_file():
            raise UserError(f"{ref}: no metrics.json (expected a run folder of edgeq quantize)")
        m = _read_metrics(mpath)
        acc = m["accuracy"]
        q = acc.get("quantized_onnx", acc.get("simulation", {}))
        lat = m.get("latency", {})
        rows.append(
            {
                "run": str(p),
                "mode": m.get("mode"),
                "fp32_top1": acc["fp32_onnx"].get("top1"),
                "top1": q.get("top1"),
                "agreement": q.get("agreement"),
                "size_ratio": (m["bytes"].get("quantized_onnx") or m["bytes"]["artifact"])
                / m["bytes"]["fp32_onnx"],
                **{f"latency_ratio_b{k}": v["ratio"] for k, v in lat.items()},
                "quantize_s": m["seconds"]["quantize"],
            }
        )
    if args.out:
        _compare_plots(rows, Path(args.out))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(_cell(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(f"{k:<{widths[k]}}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{_cell(r.get(k)):<{widths[k]}}" for k in keys))
    out.result("\n".join(lines), rows)
    return 0


def _read_metrics(path: Path) -> dict[str, Any]:
    """A run's metrics.json, checked for what compare reads."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable metrics.json ({e})") from e
    ok = (
        isinstance(m, dict)
        and isinstance(m.get("accuracy"), dict)
        and isinstance(m["accuracy"].get("fp32_onnx"), dict)
        and isinstance(m.get("bytes"), dict)
        and isinstance(m["bytes"].get("fp32_onnx"), int | float)
        and isinstance(m.get("seconds"), dict)
        and isinstance(m.get("latency", {}), dict)
    )
    if not ok:
        raise UserError(f"{path}: not the metrics.json of an edgeq quantize run (missing keys)")
    return m


def _compare_plots(rows: list[dict[str, Any]], out: Path) -> None:
    """Accuracy vs size and accuracy vs latency, one point per run (runs with top-1)."""
    from edgeq.report.plots import tradeoff

    out.mkdir(parents=True, exist_ok=True)
    with_acc = [r for r in rows if r.get("top1") is not None]
    if len(with_acc) < 2:
        raise UserError("--out plots need at least two runs evaluated on labeled data (--eval)")
    labels = {r["run"]: Path(r["run"]).name for r in with_acc}
    tradeoff(
        {labels[r["run"]]: (r["size_ratio"], r["top1"]) for r in with_acc},
        "size on disk (fraction of FP32 ONNX)",
        "Accuracy vs size",
        out / "accuracy_vs_size.png",
    )
    lat = [r for r in with_acc if r.get("latency_ratio_b1") is not None]
    if len(lat) >= 2:
        tradeoff(
            {labels[r["run"]]: (r["latency_ratio_b1"], r["top1"]) for r in lat},
            "ONNX Runtime latency at batch 1 (fraction of FP32)",
            "Accuracy vs latency",
            out / "accuracy_vs_latency.png",
        )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "n/a" if v is None else str(v)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeq",
        description="Compress PyTorch models for edge deployment, measured in the runtime.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or log lines")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="recipe YAML (flags override it)")
        p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    def trust(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--trust-model-file",
            action="store_true",
            help="allow reading a TorchScript or .pt2 model file, or an artifact that "
            "rebuilds its model from a factory or such a file: this can run the code "
            "they carry (use only files you trust)",
        )

    def preprocessing(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group(
            "preprocessing (default: what the model declares, else ImageNet's)"
        )
        g.add_argument("--resize", type=int, help="resize the shorter side to N pixels")
        g.add_argument("--crop", type=int, help="centre crop N x N")
        g.add_argument("--mean", type=float, nargs=3, metavar="M", help="per-channel mean")
        g.add_argument("--std", type=float, nargs=3, metavar="S", help="per-channel std")
        g.add_argument("--interpolation", help="bilinear | bicubic | nearest")
        g.add_argument("--channel-order", help="rgb | bgr")

    q = sub.add_parser("quantize", help="quantize a model; write a run folder and a report")
    q.add_argument(
        "model",
        help="torchvision:NAME | package.module:factory | a .pt2 or TorchScript file",
    )
    q.add_argument(
        "--calib", required=True, help="image folder (class subfolders or images/ + labels.csv)"
    )
    q.add_argument("--eval", help="labeled image folder for accuracy")
    q.add_argument("--weights", help="weights file (.pth/.pt with weights_only, .safetensors)")
    q.add_argument("--out", help="run folder (default: the next runs/NNN)")
    q.add_argument("--force", action="store_true", help="replace an existing --out folder")
    q.add_argument("--dry-run", action="store_true", help="print the resolved recipe and stop")
    q.add_argument("--calib-images", type=int, help="calibration images (default 256)")
    q.add_argument("--mode", help="static | weight_only | float16 | dynamic")
    q.add_argument("--target", help="portable | vnni")
    q.add_argument("--capture", help="fx | export (torch.export: vision transformers, ShuffleNet)")
    trust(q)
    preprocessing(q)
    common(q)

    t = sub.add_parser(
        "train",
        help="quantization-aware training with distillation; write a run folder and a report",
    )
    t.add_argument(
        "model",
        help="torchvision:NAME | package.module:factory | a .pt2 or TorchScript file",
    )
    t.add_argument(
        "--data",
        required=True,
        help="training images: class subfolders, images/ + labels.csv, or a plain folder "
        "of images (unlabeled)",
    )
    t.add_argument("--calib", help="calibration images (default: a sample of --data)")
    t.add_argument("--eval", help="labeled images for accuracy (never --data or --calib)")
    t.add_argument("--weights", help="weights file (.pth/.pt with weights_only, .safetensors)")
    t.add_argument("--teacher", help="the teaching model (default: the FP32 model itself)")
    t.add_argument("--teacher-weights", help="the teacher's weights file")
    t.add_argument("--epochs", type=int, help="training epochs (default 1: recipe train.epochs)")
    t.add_argument("--out", help="run folder (default: the next runs/NNN)")
    t.add_argument("--force", action="store_true", help="replace an existing --out folder")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the --out run whose training was cut short, from its checkpoint",
    )
    t.add_argument("--dry-run", action="store_true", help="print the resolved recipe and stop")
    trust(t)
    preprocessing(t)
    common(t)

    d = sub.add_parser("demo", help="quantize the real pretrained MobileNetV2, offline")
    d.add_argument("--calib", help="image folder (default: scikit-image's sample photos)")
    d.add_argument("--eval", help="labeled image folder for accuracy")
    d.add_argument("--out", help="run folder (default: the next runs/NNN)")
    d.add_argument("--force", action="store_true")
    d.add_argument("--dry-run", action="store_true")
    d.add_argument("--calib-images", type=int)
    preprocessing(d)
    common(d)

    e = sub.add_parser("eval", help="accuracy and fidelity of a model on labeled images")
    e.add_argument("model", help="ONNX file, run/artifact folder, or a model reference")
    e.add_argument("--data", required=True)
    e.add_argument("--weights")
    e.add_argument("--ref", help="reference model for agreement, SQNR and KL")
    e.add_argument("--ref-weights")
    trust(e)
    preprocessing(e)
    common(e)

    b = sub.add_parser(
        "bench",
        help="ONNX Runtime latency, throughput and peak memory; two models (or a run "
        "folder): both timed in one loop, as a ratio",
    )
    b.add_argument("onnx", nargs="+", help="ONNX file, two ONNX files, or a run folder")
    b.add_argument("--batch", type=int, nargs="+")
    b.add_argument("--threads", type=int)
    b.add_argument("--rounds", type=int)
    common(b)

    s = sub.add_parser("sensitivity", help="rank layers by the error their quantization adds")
    s.add_argument("model")
    s.add_argument("--calib", required=True)
    s.add_argument("--eval", required=True)
    s.add_argument("--weights")
    s.add_argument("--images", type=int, default=64, help="evaluation images (default 64)")
    s.add_argument("--calib-images", type=int)
    s.add_argument("--out")
    s.add_argument("--force", action="store_true")
    trust(s)
    preprocessing(s)
    common(s)

    c = sub.add_parser("compare", help="side-by-side table of runs")
    c.add_argument("runs", nargs="+", help="run folders (or their metrics.json)")
    c.add_argument("--out", help="folder for accuracy-vs-size and accuracy-vs-latency plots")
    common(c)
    return parser


COMMANDS = {
    "quantize": cmd_quantize,
    "train": cmd_train,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "compare": cmd_compare,
    "sensitivity": cmd_sensitivity,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is so that it stops like on Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = _Out(getattr(args, "quiet", False), getattr(args, "json", False))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args, out)
    except _user_errors() as e:
        print(f"edgeq {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"edgeq {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"edgeq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"edgeq {args.command}: internal error (a bug in edgeq; please report it with "
            "the traceback above)",
            file=sys.stderr,
        )
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
