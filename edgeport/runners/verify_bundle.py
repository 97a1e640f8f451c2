#!/usr/bin/env python3
"""Check this bundle on the device: file integrity, golden outputs, latency.

    python verify.py              # one PASS/FAIL line; exit 0 when everything matches
    python verify.py --json       # the same, plus one JSON object on stdout

Needs only the runtime (onnxruntime or openvino) and numpy: golden.npz holds token ids, so no
tokenizer library, and the reference outputs of the original PyTorch model, so no torch.

1. manifest.json is checked against the digests recorded in it at conversion
   (reproducibility.manifest_sha256 over its stable part, content_sha256 over that and
   every stable file): an edited threshold, tolerance or runtime setting fails. These
   digests catch edits, not forgery: to trust a bundle from elsewhere, compare its
   content_sha256 with the one published by whoever converted it. Every path in the
   manifest must stay inside the bundle (relative, no `..`, not through a link).
   Then every file's sha256 is compared with manifest.json; changed, missing and extra
   files fail, each one named (the device-runs/ folder that `edgeport verify --on`
   writes beside the bundle's files is not part of the bundle and is not checked).
2. The golden inputs run through the model; the task metric is compared with the
   reference outputs exactly as edgeport's validation does (pooled embedding cosine for
   feature extraction, top-1 agreement for classification, next-token agreement at every
   position of the validation windows for language models, whose KV-cache inputs are
   filled in with an empty cache), under the tolerance the bundle was converted with.
   The largest absolute error is reported too (not for token ids).
3. Latency is measured over a few runs of the longest golden input (reported, not gated).

Exit codes: 0 passed, 2 malformed bundle (manifest or golden data unreadable),
3 corrupted files or outputs outside the tolerance, 4 the runtime is not installed.

Written by edgeport; `edgeport verify BUNDLE` runs this same code from the build host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

if __package__:  # edgeport.runners.verify_bundle: `edgeport verify` on the build host
    from edgeport.runners import ondevice
else:  # verify.py inside a bundle: the bundle's own ondevice.py, beside this file
    sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ondevice  # type: ignore[import-not-found, no-redef]

DEFAULT_RUNS = 5
WARMUP_RUNS = 1


def check_golden(
    spec: Mapping[str, Any],
    golden: Mapping[str, Any],
    pairs: list[tuple[dict[str, ondevice.Array], dict[str, ondevice.Array]]],
    run: ondevice.RunFn,
) -> dict[str, Any]:
    """Run the golden inputs; names, then shapes, then values, then the task metric."""
    failures: list[str] = []
    actual = [run(feeds) for feeds, _ in pairs]
    outputs = []
    for name in golden["output_names"]:
        # A multi-part model's samples each hold the outputs of their own part only.
        held = [(ref, out) for (_, ref), out in zip(pairs, actual, strict=True) if name in ref]
        if any(name not in out for _, out in held):
            failures.append(f"output {name!r} is missing from the model")
            continue
        max_error = 0.0
        for (feeds, ref), out in zip(pairs, actual, strict=True):
            if name not in ref:
                continue
            expected, got = np.asarray(ref[name]), np.asarray(out[name])
            if expected.shape != got.shape:
                failures.append(
                    f"output {name!r}: shape {list(got.shape)} != golden {list(expected.shape)}"
                )
                break
            if expected.dtype.kind in "iu":  # token ids: the task metric counts matches
                continue
            if not np.all(np.isfinite(got)):
                failures.append(f"output {name!r} contains NaN or infinite values")
                break
            diff = np.abs(
                ondevice.valid_positions(
                    feeds, expected.astype(np.float64) - got.astype(np.float64)
                )
            )
            max_error = max(max_error, float(diff.max(initial=0.0)))
        outputs.append({"name": name, "max_abs_error": max_error})
    metrics = []
    if not failures:
        values = ondevice.task_metrics(spec, pairs, actual)
        thresholds: dict[str, float] = dict(golden.get("thresholds") or {})
        for metric, value in values.items():
            threshold = thresholds.get(metric)
            passed = None if threshold is None else bool(np.isfinite(value) and value >= threshold)
            metrics.append(
                {"name": metric, "value": value, "threshold": threshold, "passed": passed}
            )
            if passed is False:
                failures.append(f"{metric} = {value:.6f}, needs >= {threshold}")
        unknown = sorted(set(thresholds) - set(values))
        failures += [
            f"golden threshold {m!r} has no metric for task {spec.get('task')!r}" for m in unknown
        ]
    return {"samples": len(pairs), "outputs": outputs, "metrics": metrics, "failures": failures}


def measure_latency(
    run: ondevice.RunFn, feeds: Mapping[str, ondevice.Array], runs: int
) -> dict[str, Any]:
    for _ in range(WARMUP_RUNS):
        run(feeds)
    timings = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run(feeds)
        timings.append((time.perf_counter() - start) * 1000)
    first = np.asarray(next(iter(feeds.values())))
    return {
        "runs": len(timings),
        # Token inputs: their length; images: None (the shape says what ran).
        "tokens": int(first.shape[-1]) if "input_ids" in feeds else None,
        "input_shape": list(first.shape),
        "median_ms": round(float(np.median(timings)), 3),
        "p90_ms": round(float(np.percentile(timings, 90)), 3),
    }


# --------------------------------------------------------------------------- all together


def verify(bundle: Path, *, runs: int = DEFAULT_RUNS, threads: int | None = None) -> dict[str, Any]:
    """Every check, every failure collected; `exit_code` says how it ended."""
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "passed": False,
        "exit_code": ondevice.EXIT_MALFORMED,
        "manifest": None,
        "files": None,
        "golden": None,
        "latency": None,
        "runtime": None,
        "failures": [],
    }
    try:
        manifest = ondevice.load_manifest(bundle)
        spec = manifest["runtime"]
        result["model"] = (manifest.get("model") or {}).get("id")
        result["verdict"] = manifest.get("verdict")
        checked_manifest = ondevice.check_manifest(manifest)
        result["manifest"] = checked_manifest
        result["failures"] += checked_manifest["failures"]
        files = ondevice.check_files(bundle, manifest)
        result["files"] = files
        result["failures"] += files["failures"]
        golden = manifest.get("golden")
        if checked_manifest["failures"]:
            # The thresholds and runtime settings themselves are in doubt.
            result["golden"] = {"skipped": f"{ondevice.MANIFEST} failed its digest check"}
        elif files["failures"]:
            result["golden"] = {"skipped": "the bundle's files do not match manifest.json"}
        elif not golden:
            result["golden"] = {"skipped": "this bundle carries no golden data"}
        else:
            pairs = ondevice.load_golden(bundle, golden, spec)
            run, info = ondevice.load_runtime(bundle, spec, threads)
            result["runtime"] = info
            checked = check_golden(spec, golden, pairs, run)
            result["golden"] = checked
            result["failures"] += checked["failures"]
            if runs > 0 and pairs:
                # The first part is what a device runs per input (the image tower).
                first = ondevice.parts(spec)[0]["input_names"]
                timed = [pair for pair in pairs if set(first) <= pair[0].keys()] or pairs
                longest = max(
                    timed,
                    key=lambda pair: (
                        int(np.asarray(pair[0]["input_ids"]).size) if "input_ids" in pair[0] else 0
                    ),
                )
                result["latency"] = measure_latency(run, longest[0], runs)
    except ondevice.BundleError as exc:
        result["failures"].append(str(exc))
        result["exit_code"] = exc.exit_code
        return result
    if result["failures"] and manifest.get("verdict") == "degraded":
        result["failures"].append("note: this bundle was shipped degraded (--accept-degraded)")
    result["passed"] = not result["failures"]
    result["exit_code"] = ondevice.EXIT_OK if result["passed"] else ondevice.EXIT_FAILED
    return result


def summary_line(result: Mapping[str, Any]) -> str:
    if result["passed"]:
        parts = [f"PASS {result['bundle']}"]
        files = result.get("files") or {}
        parts.append(f"{files.get('checked', 0)} files match")
        golden = result.get("golden") or {}
        if golden.get("skipped"):
            parts.append(f"golden check skipped ({golden['skipped']})")
        for metric in golden.get("metrics", []):
            parts.append(
                f"{metric['name']}={metric['value']:.6f}"
                + (f" (>= {metric['threshold']})" if metric["threshold"] is not None else "")
            )
        latency = result.get("latency")
        if latency:
            what = (
                f"{latency['tokens']} tokens"
                if latency.get("tokens") is not None
                else f"input {'x'.join(map(str, latency.get('input_shape') or []))}"
            )
            parts.append(f"latency {latency['median_ms']:.2f} ms ({what})")
        return "; ".join(parts)
    return f"FAIL {result['bundle']}: " + "; ".join(result["failures"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "bundle", nargs="?", default=None, help="bundle folder (default: this file's folder)"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON object on stdout")
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help="timed runs for latency (0: skip)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: manifest)"
    )
    args = parser.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else Path(__file__).resolve().parent
    result = verify(bundle, runs=args.runs, threads=args.threads)
    print(summary_line(result), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
