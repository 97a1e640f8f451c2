"""Time edgeport's reference graphs on a device: what `edgeport profiles calibrate` runs there.

Not a bundle file: edgeport/calibrate.py packs this script with the graphs and a
`graphs.json` (which file each runtime loads, its input shapes, threads, warm-up and runs),
streams them to the device over SSH, and the device agent runs
`python time_graphs.py graphs.json` in the unpacked folder. Standard library, numpy and
the runtimes only (never edgeport); Python 3.10 or newer.

Sessions are made as the bundles' runners make them (ONNX Runtime: default graph
optimisations, `threads` intra-op threads, one inter-op thread; OpenVINO: LATENCY hint,
one stream, f32 inference precision on CPU), all loaded before any is timed. For each
shape, each graph is timed in its own block (a warm-up, then `runs` timed runs; a block
never shares the CPU with another session's spinning threads), and every timed run
starts after writing a `flush_mb` buffer, so the weights come from memory as a model
larger than the caches reads them. The baseline (`baseline` in graphs.json: [target,
key] of the catalogue's baseline recipe) is timed first and again last: the drift between
the two blocks tells whether the device slowed down (heat) meanwhile. Prints one JSON
object: `{"runtimes": {name: version}, "threads": N, "drift": {shape: last/first - 1},
"results": [{target, key, shapes: {shape: median ms}, error}]}`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _ort_session(file: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _ov_session(file: Path, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
        "CPU_DENORMALS_OPTIMIZATION": True,
    }
    compiled = core.compile_model(core.read_model(str(file)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def _versions(targets: set[str]) -> dict[str, str]:
    found = {}
    for name in sorted(targets):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found[name] = str(getattr(module, "__version__", "unknown"))
    return found


def main(argv: list[str]) -> int:
    import numpy as np

    spec = json.loads((HERE / argv[0]).read_text(encoding="utf-8"))
    threads, warmup, runs = int(spec["threads"]), int(spec["warmup"]), int(spec["runs"])
    shapes: dict[str, list[int]] = spec["shapes"]
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    inputs = {
        name: rng.standard_normal(tuple(shape)).astype(np.float32) for name, shape in shapes.items()
    }
    makers = {"onnxruntime": _ort_session, "openvino": _ov_session}
    baseline_entry = tuple(spec["baseline"])  # (target, key), chosen by the caller
    results: list[dict[str, Any]] = []
    sessions: list[tuple[dict[str, Any], Any]] = []
    for entry in spec["graphs"]:
        result: dict[str, Any] = {"target": entry["target"], "key": entry["key"], "shapes": {}}
        results.append(result)
        try:
            run = makers[entry["target"]](HERE / entry["file"], threads)
            for x in inputs.values():
                run(x)  # the first run allocates; a failure to run shows here
        except Exception as exc:  # an unsupported op or precision on this device
            result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            continue
        sessions.append((result, run))
    flush = np.zeros(max(1, int(spec.get("flush_mb", 64)) * (1 << 20) // 8))
    baseline = next(
        (i for i, (r, _) in enumerate(sessions) if (r["target"], r["key"]) == baseline_entry), None
    )
    drift: dict[str, float] = {}
    for shape, x in inputs.items():
        others = [i for i in range(len(sessions)) if i != baseline]
        order = others if baseline is None else [baseline, *others, baseline]
        blocks: list[list[float]] = []
        for index in order:
            result, run = sessions[index]
            for _ in range(warmup):
                run(x)
            timed = []
            for _ in range(runs):
                flush += 1.0  # evicts the caches: the weights come from memory
                start = time.perf_counter()
                run(x)
                timed.append((time.perf_counter() - start) * 1000.0)
            blocks.append(timed)
            samples = result.setdefault("_samples", {}).setdefault(shape, [])
            samples.extend(timed)
        for result, _ in sessions:
            result["shapes"][shape] = round(statistics.median(result["_samples"][shape]), 6)
        if baseline is not None:
            first, last = statistics.median(blocks[0]), statistics.median(blocks[-1])
            drift[shape] = round(last / first - 1.0, 4)
    for result, _ in sessions:
        result.pop("_samples", None)
    report = {
        "runtimes": _versions({entry["target"] for entry in spec["graphs"]}),
        "threads": threads,
        "drift": drift,
        "results": results,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
