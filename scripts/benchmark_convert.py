"""How long `edgeport convert` takes, stage by stage, against optimum-cli, in one run.

    python scripts/benchmark_convert.py                  # MiniLM and the tiny Llama
    python scripts/benchmark_convert.py --only minilm --json

For each model it runs, as a user would (a fresh process each):
  * `edgeport convert` with the default search (no `--recipe`), from nothing but the
    Hugging Face cache: exports, references, quantisation, validation, timing, bundle;
  * optimum-cli's export, then its ONNX Runtime int8 quantisation: the baseline, which
    validates nothing beyond optimum's own export check and times nothing.
It prints wall time, the time per stage (from the progress lines on stderr, timestamped
as they arrive), the peak resident memory of the conversion process, the shipped recipe,
and each time as a ratio of optimum-cli's. Numbers are this host's, with its CPU model
and flags printed first: a result measured here says nothing about another host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
HF_CACHE = SHARED / "hf-cache"
TINY_LLAMA = SHARED / "models" / "tiny-llama-pydoc"


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    profile: str
    optimum_task: str
    optimum_quantize: str  # optimum-cli onnxruntime quantize's ISA flag
    fp32_weight_bytes: int = 0


CASES = {
    "minilm": Case(
        "minilm",
        "sentence-transformers/all-MiniLM-L6-v2",
        "x86-64-avx512-vnni",
        "feature-extraction",
        "--avx512_vnni",
    ),
    "tiny-llama": Case(
        "tiny-llama", str(TINY_LLAMA), "raspberry-pi-5", "text-generation-with-past", "--arm64"
    ),
}


@dataclass
class Run:
    wall_s: float
    peak_rss_mb: float
    exit_code: int
    stages: dict[str, float] = field(default_factory=dict)
    shipped: str | None = None
    stderr_tail: str = ""


def host_line() -> str:
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "fma")
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
                break
    except OSError:
        pass
    return f"host: {model}, {os.cpu_count()} CPUs, flags {' '.join(flags) or '(unknown)'}"


def _stage_name(line: str) -> str:
    """A progress heading, without what varies between runs: "[3/9] onnx-fp32: ..." is
    "candidate onnx-fp32"."""
    text = line.split("==>", 1)[1].strip()
    candidate = re.match(r"\[\d+/\d+\] ([\w.-]+):", text)
    if candidate:
        return f"candidate {candidate.group(1)}"
    for prefix in (
        "Resolving",
        "Downloading",
        "Plan for",
        "Loading the original model",
        "Measuring the",
        "Confirming latency",
        "Writing bundle",
    ):
        if text.startswith(prefix):
            return prefix
    return text[:40]


def _watch_memory(process: psutil.Process, peak: list[float], done: threading.Event) -> None:
    """The largest resident size of the conversion process itself (the measuring
    children are separate processes with their own memory)."""
    while not done.is_set():
        try:
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        except psutil.Error:
            return
        done.wait(0.05)


def run_timed(command: list[str], env: dict[str, str], cwd: Path) -> Run:
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0.0]
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_memory, args=(psutil.Process(process.pid), peak, done), daemon=True
    )
    watcher.start()
    stages: dict[str, float] = {}
    current, since = "start", started
    lines: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line.rstrip())
        if "==>" in line:
            now = time.monotonic()
            stages[current] = stages.get(current, 0.0) + now - since
            current, since = _stage_name(line), now
    stdout = process.stdout.read() if process.stdout else ""
    code = process.wait()
    end = time.monotonic()
    stages[current] = stages.get(current, 0.0) + end - since
    done.set()
    watcher.join()
    shipped = None
    try:
        payload = json.loads(stdout) if stdout.strip().startswith("{") else {}
    except json.JSONDecodeError:
        payload = {}
    if payload.get("recipe"):
        shipped = str(payload["recipe"])
        if payload.get("variant"):
            shipped += f" ({payload['variant']})"
    return Run(end - started, peak[0], code, stages, shipped, "\n".join(lines[-5:]))


def convert(case: Case, work: Path) -> Run:
    env = {**os.environ, "HF_HUB_CACHE": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    out = work / f"bundle-{case.name}"
    command = [
        sys.executable,
        "-m",
        "edgeport",
        "convert",
        case.model,
        "--profile",
        case.profile,
        "--out",
        str(out),
        "--force",
        "--json",
    ]
    return run_timed(command, env, work)


def optimum(case: Case, work: Path) -> Run:
    env = {**os.environ, "HF_HUB_CACHE": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    optimum_cli = str(Path(sys.executable).with_name("optimum-cli"))
    exported = work / f"optimum-{case.name}"
    shutil.rmtree(exported, ignore_errors=True)
    export = run_timed(
        [
            optimum_cli,
            "export",
            "onnx",
            "--model",
            case.model,
            "--task",
            case.optimum_task,
            str(exported),
        ],
        env,
        work,
    )
    quantise = run_timed(
        [
            optimum_cli,
            "onnxruntime",
            "quantize",
            "--onnx_model",
            str(exported),
            case.optimum_quantize,
            "-o",
            str(exported / "quantized"),
        ],
        env,
        work,
    )
    return Run(
        export.wall_s + quantise.wall_s,
        max(export.peak_rss_mb, quantise.peak_rss_mb),
        export.exit_code or quantise.exit_code,
        {"export": export.wall_s, "quantize": quantise.wall_s},
        "onnx int8 dynamic (unvalidated)",
        quantise.stderr_tail if quantise.exit_code else export.stderr_tail,
    )


def fp32_bytes(case: Case, work: Path) -> int:
    folder = Path(case.model)
    if not folder.is_dir():
        folder = next((work / "hf").glob(f"models--{case.model.replace('/', '--')}/snapshots/*"))
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    print(host_line(), file=sys.stderr)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeport-benchmark-convert-") as tmp:
        work = Path(tmp)
        shutil.copytree(HF_CACHE, work / "hf")  # the cache is written to; the shared one is not
        for name in args.only or list(CASES):
            case = CASES[name]
            baseline = optimum(case, work)
            run = convert(case, work)
            weights_mb = fp32_bytes(case, work) / 2**20
            budget_mb = 2 * weights_mb + 1024
            results[name] = {
                "profile": case.profile,
                "optimum_cli_s": round(baseline.wall_s, 1),
                "edgeport": run,
                "fp32_weights_mb": round(weights_mb, 1),
                "memory_budget_mb": round(budget_mb, 1),
            }
            print(
                f"\n{name} for {case.profile} (fp32 weights {weights_mb:.0f} MB)", file=sys.stderr
            )
            print(
                f"  optimum-cli export + quantize:      {baseline.wall_s:6.1f} s  "
                f"peak {baseline.peak_rss_mb:6.0f} MB  ({baseline.shipped})",
                file=sys.stderr,
            )
            ratio = run.wall_s / baseline.wall_s if baseline.wall_s else float("nan")
            verdict = "ok" if run.exit_code == 0 else f"exit {run.exit_code}"
            memory = "within" if run.peak_rss_mb <= budget_mb else "OVER"
            print(
                f"  edgeport convert (default search): {run.wall_s:6.1f} s  "
                f"peak {run.peak_rss_mb:6.0f} MB ({memory} 2x weights + 1 GB)  "
                f"{ratio:5.1f}x optimum-cli  ships {run.shipped} [{verdict}]",
                file=sys.stderr,
            )
            for stage, seconds in run.stages.items():
                print(f"      {stage:<40} {seconds:6.1f} s", file=sys.stderr)
            if run.exit_code:
                print(f"      {run.stderr_tail}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {"host": host_line(), "results": results},
                default=lambda run: run.__dict__,
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
