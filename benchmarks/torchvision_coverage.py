"""Coverage: does every torchvision classification model quantize, export and run?

    .venv/bin/python benchmarks/torchvision_coverage.py [--out benchmarks/results]
        [--max-params 150e6] [--timeout 300] [--only NAME ...]

Random weights (nothing downloaded), 2 calibration inputs, min-max weight ranges and
target="vnni" (coverage of graph rewriting, export and kernels; not accuracy). Each
model runs in its own process with a time limit: quantize (static W8A8), export, run
in ONNX Runtime, compare with the simulation; or the exact error edgeq raised. A model
whose torch.fx capture does not export is retried with ``capture="export"``
(torch.export, lifted back into modules); the table says which capture ran. Linear
layers that torchvision initializes to zero (ViT's head) get N(0, 0.02) weights, so
that the comparison with ONNX Runtime sees nonzero logits. Models above --max-params
are listed as not run (this machine's time and memory).
Writes torchvision_coverage.json and .md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import time
import traceback
from pathlib import Path


def _one(name: str, q: mp.Queue) -> None:
    import tempfile

    import numpy as np
    import torch

    import edgeq
    from edgeq.export import ExportError
    from edgeq.graph.lift import export_and_lift
    from edgeq.quant import QuantSpec
    from edgeq.runtime import ort_session

    torch.set_num_threads(2)
    res: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = edgeq.load_model(f"torchvision:{name}")
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and not m.weight.any():
                    m.weight.normal_(0, 0.02)
        res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        size = 299 if name == "inception_v3" else 224
        x = torch.randn(2, 3, size, size)
        # the graph rewriting, export and kernels under test do not depend on how ranges
        # are chosen: min-max weights and no pair search keep this run short
        cfg = edgeq.PTQConfig(
            weight=QuantSpec(bits=8, granularity="per_channel", axis=0, range_method="minmax"),
            target="vnni",
        )
        for capture in ("fx", "export"):
            if capture == "export":
                model = export_and_lift(model, (x,))
            qm = edgeq.quantize(model, [x], cfg)
            res["capture"] = capture
            res["float_ops"] = len(qm.placement.float_ops)
            res["float_op_names"] = qm.placement.float_ops[:8]
            try:
                with tempfile.TemporaryDirectory() as d:
                    path = edgeq.export_onnx(qm, Path(d) / "q.onnx", x[:1])
                    sess = ort_session(path)
                    ours = sess.run(None, {"input": x.numpy()})[0]
                break
            except ExportError as e:
                if capture == "export":
                    raise
                res["fx_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        with torch.no_grad():
            sim = qm(x).numpy()
        res["status"] = "ok"
        res["ort_vs_sim_max_abs"] = float(np.abs(ours - sim).max())
        res["logits_max_abs"] = float(np.abs(sim).max())  # the scale that difference is on
        res["ort_vs_sim_top1_agreement"] = float((ours.argmax(1) == sim.argmax(1)).mean())
    except Exception as e:
        res["status"] = "error"
        res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        res["where"] = traceback.extract_tb(e.__traceback__)[-1].name
    res["seconds"] = time.perf_counter() - t0
    q.put(res)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--only", nargs="*")
    parser.add_argument(
        "--merge", action="store_true", help="update the existing results file, model by model"
    )
    args = parser.parse_args()
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    ctx = mp.get_context("spawn")
    results: list[dict] = []
    previous = args.out / "torchvision_coverage.json"
    if args.merge and previous.is_file():
        results = [r for r in json.loads(previous.read_text()) if r["model"] not in names]
    for name in names:
        import torch

        try:  # count parameters without allocating them
            with torch.device("meta"):
                model = torchvision.models.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):  # inits that copy data (RegNet)
            model = torchvision.models.get_model(name, weights=None)
        params = sum(p.numel() for p in model.parameters())
        del model
        if params > args.max_params:
            results.append(
                {
                    "model": name,
                    "status": "not run",
                    "error": f"{params / 1e6:.0f}M parameters > --max-params",
                    "params_m": params / 1e6,
                }
            )
            print(f"{name}: not run ({params / 1e6:.0f}M params)", flush=True)
            _write(results, args.out)
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_one, args=(name, q))
        p.start()
        # read before joining: a child blocks on exit until its queued result is read
        try:
            res = q.get(timeout=args.timeout)
        except queue.Empty:
            alive = p.is_alive()
            res = {
                "model": name,
                "status": "timeout" if alive else "crashed",
                "error": f"over {args.timeout:.0f} s" if alive else f"exit code {p.exitcode}",
            }
        p.kill()
        p.join()
        results.append(res)
        results.sort(key=lambda r: r["model"])
        print(f"{name}: {res['status']} {res.get('error', '')}", flush=True)
        _write(results, args.out)


def _write(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "torchvision_coverage.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = sum(r["status"] == "ok" for r in results)
    exact = sum(r.get("ort_vs_sim_max_abs") == 0.0 for r in results)
    lines = [
        "# torchvision classification models: quantize, export, run in ONNX Runtime",
        "",
        f"{ok} of {len(results)} run end to end; {exact} of them bit-exact against the "
        "simulation. Random weights, 2 random calibration inputs (coverage only, not "
        "accuracy).",
        "",
        "| model | params (M) | status | capture | ops left in float | ORT vs sim max abs diff "
        "| error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        diff = r.get("ort_vs_sim_max_abs")
        lines.append(
            f"| {r['model']} | {r.get('params_m', 0):.1f} | {r['status']} | "
            f"{r.get('capture', 'fx' if 'seconds' in r else '')} | {r.get('float_ops', '')} | "
            f"{'' if diff is None else f'{diff:.3g}'} | "
            f"{r.get('error', '').replace('|', '/')} |"
        )
    (out / "torchvision_coverage.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
