#!/usr/bin/env python3
"""Where edgeport stands against optimum-cli's defaults on one vision model, in one run.

    python scripts/benchmark_vision.py MODEL_DIR [--profile PROFILE] [--images N]
                                       [--runs N] [--threads N] [--task TASK] [--json]

For the same images (edgeport's built-in validation crops of scikit-image photographs,
never used for calibration) turned into the same pixel_values by the bundle's own
preprocessing (ondevice.pixel_values), it builds

  1. optimum-cli export onnx                                  -- the baseline (ratio 1.00)
  2. optimum-cli onnxruntime quantize --<host preset>         -- optimum's dynamic int8
  3. optimum-cli export openvino --weight-format fp32
  4. optimum-cli export openvino --weight-format int8         -- int8 weights only
  5. edgeport convert --profile PROFILE                       -- whatever edgeport ships

and prints, per row: latency per image at batch 1 (median of the timed runs, after
warm-up) and its ratio to the baseline, the size of the model files and its ratio, and the
agreement with the PyTorch original on every image (top-1 agreement and worst logit
cosine for classifiers; worst and mean embedding cosine for image-feature-extraction).
A row whose tool fails (optimum's quantiser on an unsupported op, a runtime refusing the
result) is a row with the error, not a crash.

Every row runs with the same runtime settings as an edgeport bundle (ondevice.py's
ONNX Runtime session options and OpenVINO compile config: f32 precision, one stream) and
the same thread count (1 by default), so the rows differ only in the model files. The
numbers come from this build host: they rank the rows here and say nothing absolute
about the device the profile describes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

Array = np.ndarray[Any, Any]
RunFn = Callable[[Mapping[str, Array]], Mapping[str, Array]]

CLASSIFICATION = "image-classification"
EMBEDDING = "image-feature-extraction"
PIXELS = "pixel_values"
# Interleaved rounds of timed runs: a load that comes and goes on a shared host (other
# engineers' tests) then hits every row alike instead of whichever row was running.
ROUNDS = 5
NOTE = (
    "measured on this build host, not on the device: ratios compare rows of this run; "
    "the profile only decides what edgeport ships"
)


@dataclass
class Row:
    label: str
    runtime: str  # ondevice.RUNTIMES key: "onnxruntime" or "openvino"
    command: str
    directory: Path | None = None
    model_file: str | None = None
    # The output compared for image-feature-extraction (edgeport's row: its manifest's).
    embedding_output: str | None = None
    # ondevice.load_runtime's spec: the manifest's runtime for edgeport's bundle, so it
    # runs as on the device; runner and model file alone for optimum's folders.
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    build_s: float = 0.0
    error: str | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    size_ratio: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["directory"] = None  # a temporary folder, gone when the script ends
        del data["spec"]  # the manifest's runtime section: labels and all, not a result
        return data


# ----------------------------------------------------------------------------- host


def host_description() -> dict[str, Any]:
    """This host's CPU model and the ISA flags that decide int8 kernels and edgeport's
    ranking; probe_cpu honours EDGEPORT_HOST_FEATURES, as `--profile host` does."""
    from edgeport.host import HOST_FEATURES_ENV, probe_cpu

    cpu = probe_cpu()
    shown = [
        f
        for f in cpu.features
        if f in {"avx2", "neon", "dotprod", "i8mm"}
        or f.startswith(("avx512", "amx"))
        or "vnni" in f
    ]
    return {
        "cpu": cpu.name or platform.processor() or platform.machine(),
        "arch": cpu.arch,
        "cores": cpu.cores,
        "isa": shown,
        "features": list(cpu.features),
        "features_override": os.environ.get(HOST_FEATURES_ENV),
    }


def quantize_preset(features: Sequence[str], arch: str) -> str | None:
    """optimum-cli's quantise flag for this host: the richest x86 preset its CPU has, the
    arm64 one on Arm (neon is in an EDGEPORT_HOST_FEATURES override that plays an Arm
    host)."""
    if "avx512_vnni" in features:
        return "avx512_vnni"
    if "avx512f" in features:
        return "avx512"
    if "avx2" in features:
        return "avx2"
    if arch == "arm64" or "neon" in features:
        return "arm64"
    return None


# ----------------------------------------------------------------------------- building


def optimum_cli() -> str | None:
    # The venv's own optimum-cli first: the one that matches the optimum this runs with.
    beside = Path(sys.executable).with_name("optimum-cli")
    return str(beside) if beside.is_file() else shutil.which("optimum-cli")


def run_tool(command: list[str], log: Path) -> tuple[float, str | None]:
    """(seconds, error or None). The tool's chatter goes to `log`; only a failure's last
    lines reach stderr, so the table is not buried under export warnings."""
    print("$ " + " ".join(command), file=sys.stderr)
    start = time.perf_counter()
    try:
        with log.open("w", encoding="utf-8") as out:
            completed = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    except OSError as exc:  # optimum-cli missing or not executable: a failed row
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    if completed.returncode == 0:
        return seconds, None
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    print("\n".join(lines[-15:]), file=sys.stderr)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return seconds, f"exit {completed.returncode}: {last[:300]}"


def model_bytes(directory: Path, model_file: str) -> int:
    """The model's own files (graph, weights, external data), not configs or processors."""
    stem = model_file.rsplit(".", 1)[0]
    return sum(
        p.stat().st_size
        for p in directory.iterdir()
        if p.is_file() and (p.name == model_file or p.name.startswith(stem + "."))
    )


def optimum_row(
    label: str, runtime: str, command: list[str], out: Path, model_file: str, log: Path
) -> Row:
    row = Row(label, runtime, " ".join(command))
    row.build_s, row.error = run_tool(command, log)
    if row.error is None:
        if (out / model_file).is_file():
            row.directory, row.model_file = out, model_file
            row.size_bytes = model_bytes(out, model_file)
        else:
            row.error = f"no {model_file} in the output folder"
    return row


def edgeport_row(model: Path, profile: str, task: str, out: Path, log: Path) -> Row:
    command = [sys.executable, "-m", "edgeport", "convert", str(model), "--profile", profile,
               "--task", task, "--out", str(out), "--force", "--json"]  # fmt: skip
    row = Row(f"edgeport convert --profile {profile}", "", " ".join(command))
    print("$ " + row.command, file=sys.stderr)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    row.build_s = time.perf_counter() - start
    log.write_text(completed.stderr, encoding="utf-8")
    try:
        result: dict[str, Any] = json.loads(completed.stdout)
    except json.JSONDecodeError:
        print(completed.stderr[-3000:], file=sys.stderr)
        row.error = f"exit {completed.returncode}, no JSON result"
        return row
    if "error" in result:
        row.error = f"exit {completed.returncode}: {result['error'].get('message', '')[:300]}"
        return row
    if not result.get("bundle"):
        row.error = f"edgeport shipped nothing (verdict {result.get('verdict')})"
        return row
    bundle = Path(result["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    runtime = manifest["runtime"]
    row.label = f"edgeport {profile}: {result.get('recipe')} ({result.get('verdict')})"
    row.runtime = str(runtime.get("runner") or runtime.get("target"))
    row.directory, row.model_file = bundle, str(runtime["model_file"])
    row.embedding_output = runtime.get("embedding_output")
    row.spec = dict(runtime)
    stem = row.model_file.rsplit(".", 1)[0]
    # The manifest lists what ships; the model's share is its graph and weight files.
    row.size_bytes = sum(
        int(f["bytes"])
        for f in manifest["files"]
        if f["path"] == row.model_file or str(f["path"]).startswith(stem + ".")
    )
    return row


def build_rows(args: argparse.Namespace, task: str, work: Path) -> list[Row]:
    from edgeport.host import probe_cpu

    model, cli = str(args.model), optimum_cli() or "optimum-cli"
    logs = work / "logs"
    logs.mkdir()
    onnx = work / "onnx"
    export = [cli, "export", "onnx", "--model", model, "--task", task, str(onnx)]
    rows = [
        optimum_row(
            "optimum-cli export onnx (fp32)",
            "onnxruntime",
            export,
            onnx,
            "model.onnx",
            logs / "onnx.log",
        )
    ]
    cpu = probe_cpu()  # honours EDGEPORT_HOST_FEATURES, like `--profile host`
    preset = quantize_preset(cpu.features, cpu.arch)
    label = f"optimum-cli onnxruntime quantize --{preset or '?'} (dynamic int8)"
    quantized = work / "onnx-quantized"
    quantize = [cli, "onnxruntime", "quantize", "--onnx_model", str(onnx), f"--{preset}",
                "-o", str(quantized)]  # fmt: skip
    if preset is None:
        rows.append(Row(label, "onnxruntime", "", error="no optimum preset for this host's ISA"))
    elif rows[0].error:
        rows.append(Row(label, "onnxruntime", " ".join(quantize), error="no ONNX export"))
    else:
        rows.append(
            optimum_row(
                label,
                "onnxruntime",
                quantize,
                quantized,
                "model_quantized.onnx",
                logs / "quantize.log",
            )
        )
    for weights in ("fp32", "int8"):
        out = work / f"openvino-{weights}"
        command = [cli, "export", "openvino", "--model", model, "--task", task,
                   "--weight-format", weights, str(out)]  # fmt: skip
        rows.append(
            optimum_row(
                f"optimum-cli export openvino --weight-format {weights}",
                "openvino",
                command,
                out,
                "openvino_model.xml",
                logs / f"openvino-{weights}.log",
            )
        )
    rows.append(
        edgeport_row(args.model, args.profile, task, work / "bundle", logs / "edgeport.log")
    )
    return rows


# ----------------------------------------------------------------------------- measuring


def reference_outputs(
    model: Path, task: str, pixels: Sequence[Array], threads: int
) -> list[dict[str, Array]]:
    """The PyTorch original on each image's pixel_values, one image at a time (a config
    without a crop gives each image its own size)."""
    import torch
    from transformers import AutoModel, AutoModelForImageClassification

    torch.set_num_threads(threads)  # the host is shared; the reference is not timed
    loader = AutoModelForImageClassification if task == CLASSIFICATION else AutoModel
    network = loader.from_pretrained(str(model)).eval()
    names = ("logits",) if task == CLASSIFICATION else ("pooler_output", "last_hidden_state")
    outputs = []
    with torch.no_grad():
        for array in pixels:
            result = network(pixel_values=torch.from_numpy(array))
            outputs.append(
                {
                    name: getattr(result, name).float().numpy()
                    for name in names
                    if getattr(result, name, None) is not None
                }
            )
    return outputs


def accuracy(
    row: Row, task: str, run: RunFn, pixels: Sequence[Array], reference: list[dict[str, Array]]
) -> dict[str, float]:
    """edgeport's own formulas (ondevice.py), so the numbers mean what a manifest's mean."""
    from edgeport.families.vision import embedding_output
    from edgeport.runners import ondevice

    actual = [dict(run({PIXELS: array})) for array in pixels]
    if task == CLASSIFICATION:
        return ondevice.image_classification_metrics(reference, actual, "logits")
    # The row's embedding output as a bundle would pick it, compared with the same-named
    # output of the original (pooler_output when the backbone has one).
    name = row.embedding_output = row.embedding_output or embedding_output(list(actual[0]))
    if name not in reference[0]:
        raise ValueError(f"output {name!r} has no PyTorch counterpart ({sorted(reference[0])})")
    return ondevice.image_embedding_metrics(reference, actual, name)


def time_rows(runs: list[RunFn], frame: Array, warmup: int, count: int) -> list[list[list[float]]]:
    """Milliseconds per call: [row][round][run]. Every row is warmed up first, then rounds
    in which each row runs `count / ROUNDS` times back to back (a camera loop's state)."""
    feeds = {PIXELS: frame}
    for run in runs:
        for _ in range(warmup):
            run(feeds)
    rounds = max(1, min(ROUNDS, count))
    per_round = max(1, count // rounds)
    timings: list[list[list[float]]] = [[] for _ in runs]
    for _ in range(rounds):
        for index, run in enumerate(runs):
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                run(feeds)
                times.append((time.perf_counter() - start) * 1000)
            timings[index].append(times)
    return timings


def measure(
    rows: list[Row], args: argparse.Namespace, task: str, images: Sequence[Image.Image]
) -> None:
    from edgeport.families.vision import preprocessor_config
    from edgeport.runners import ondevice

    with contextlib.suppress(ImportError):
        import onnxruntime

        # Errors only: optimum's export declares the config's image_size in the output
        # shapes, and ORT warns on every run of a smaller crop (harmless, but it buries
        # the table).
        onnxruntime.set_default_logger_severity(3)
    config = preprocessor_config(args.model)
    pixels = [ondevice.pixel_values([image], config) for image in images]
    reference = reference_outputs(args.model, task, pixels, args.threads)
    loaded: list[tuple[Row, RunFn]] = []
    for row in rows:
        if row.error or row.directory is None or row.model_file is None:
            continue
        spec = row.spec or {"runner": row.runtime, "model_file": row.model_file}
        try:
            run, _ = ondevice.load_runtime(row.directory, spec, args.threads)
            row.metrics = accuracy(row, task, run, pixels, reference)
        except Exception as exc:  # a runtime refusing a model is a result, not a crash
            row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            continue
        loaded.append((row, run))
    if not loaded:
        return
    timings = time_rows([run for _, run in loaded], pixels[0], args.warmup, args.runs)
    base_rounds = timings[0] if loaded[0][0] is rows[0] else None
    for (row, _), rounds in zip(loaded, timings, strict=True):
        row.latency_ms = statistics.median(t for times in rounds for t in times)
        if base_rounds is not None:
            # Paired per round, then the median: drift on the host cancels out.
            row.latency_ratio = statistics.median(
                statistics.median(r) / statistics.median(b)
                for r, b in zip(rounds, base_rounds, strict=True)
            )
    base_size = rows[0].size_bytes
    for row in rows:
        if row.size_bytes is not None and base_size and rows[0].error is None:
            row.size_ratio = row.size_bytes / base_size


# ----------------------------------------------------------------------------- output


def table(rows: list[Row], task: str) -> list[str]:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    if task == CLASSIFICATION:
        quality = ("top-1 agree", "worst logit cos")
        keys = ("top1_agreement", "logit_cosine_min")
    else:
        quality = ("worst emb cos", "mean emb cos")
        keys = ("embedding_cosine_min", "embedding_cosine_mean")
    lines = [
        f"| row | runtime | build s | ms/image | latency vs base | MB | size vs base "
        f"| {quality[0]} | {quality[1]} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        megabytes = None if row.size_bytes is None else row.size_bytes / 1e6
        if row.error:
            lines.append(
                f"| {row.label} | {row.runtime or '-'} | {row.build_s:.1f} "
                f"| failed: {row.error} | | | | | |"
            )
            continue
        lines.append(
            f"| {row.label} | {row.runtime} | {row.build_s:.1f} "
            f"| {number(row.latency_ms, '.3f')} | {number(row.latency_ratio, '.2f')}x "
            f"| {number(megabytes, '.3f')} | {number(row.size_ratio, '.2f')}x "
            f"| {number(row.metrics.get(keys[0]), '.4f')} "
            f"| {number(row.metrics.get(keys[1]), '.5f')} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="folder of a Hugging Face vision model")
    parser.add_argument("--profile", default="host", help="edgeport profile (default: host)")
    parser.add_argument("--task", choices=(CLASSIFICATION, EMBEDDING), default=None,
                        help="default: what edgeport infers from the model's config")  # fmt: skip
    parser.add_argument("--images", type=int, default=64, help="validation crops to compare on")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per row first")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, every row")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    if args.images < 1 or args.runs < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("--images, --runs and --threads must be >= 1, --warmup >= 0")

    from edgeport.hub import resolve
    from edgeport.image_samples import builtin_images
    from edgeport.model_info import inspect_model

    task = args.task or inspect_model(resolve(str(args.model))).task
    if task not in (CLASSIFICATION, EMBEDDING):
        raise SystemExit(f"{args.model}: task {task!r} is not a vision task this script knows")
    host = host_description()
    images = builtin_images("validation", args.images)
    with tempfile.TemporaryDirectory(prefix="edgeport-vision-bench-") as tmp:
        rows = build_rows(args, task, Path(tmp))
        measure(rows, args, task, images)

    override = f" (EDGEPORT_HOST_FEATURES={host['features_override']})"
    heading = [
        f"host: {host['cpu']}; {host['arch']}; {host['cores']} usable cores; ISA: "
        f"{' '.join(host['isa']) or 'none of avx2/avx512*/vnni/amx/neon/dotprod/i8mm'}"
        + (override if host["features_override"] is not None else ""),
        f"note: {NOTE}",
        f"model: {args.model} ({task}); {len(images)} built-in validation crops, each at "
        f"batch 1; {args.threads} thread(s) for every runtime",
        "",
    ]
    footer = [
        "",
        f"latency: median of {args.runs} runs at batch 1 on the first crop's pixel_values "
        f"after {args.warmup} warm-up runs, in {min(ROUNDS, args.runs)} interleaved rounds; "
        "'vs base': median of the per-round ratios to the first row (< 1 is faster); MB: the "
        "model's own files; quality: against PyTorch on every crop",
    ]
    text = "\n".join(heading + table(rows, task) + footer)
    if args.json:
        print(text, file=sys.stderr)  # stdout carries only the JSON object
        payload = {
            "host": host,
            "note": NOTE,
            "model": str(args.model),
            "task": task,
            "profile": args.profile,
            "images": len(images),
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "rows": [row.as_json() for row in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(text)
    return 0 if rows[0].error is None else 1


if __name__ == "__main__":
    sys.exit(main())
