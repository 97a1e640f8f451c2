#!/usr/bin/env python3
"""Side-by-side benchmark of a small language model: optimum-cli's defaults vs edgeport's choice.

    python scripts/benchmark_llm.py [MODEL] [--profile raspberry-pi-5 --profile intel-n100]
                                    [--threads N] [--workdir DIR] [--json]

For the same model, the same prompt and the same validation texts, it builds

- `optimum-cli export onnx --task text-generation-with-past` (fp32; the baseline),
- `optimum-cli export openvino --weight-format int4` (optimum-intel's int4 defaults),
- `edgeport convert MODEL --profile P` for each profile (the bundle edgeport ships),

and measures each on this host with edgeport's own tools: greedy decoding speed with the
KV cache (tokens/s), time to first token and peak memory (bench.py, one child process per
model), size of the model files, and the validation metrics against PyTorch (next-token
agreement, perplexity increase, generation match; workloads.DecoderWorkload). Every
number is also printed as a ratio against the fp32 baseline. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "tiny-llama-pydoc"


@dataclass
class Contender:
    label: str
    target: str
    directory: Path
    model_file: str
    files: list[str]


def _run(command: list[str]) -> None:
    print("$ " + " ".join(command), file=sys.stderr)
    completed = subprocess.run(command, check=False, stdout=sys.stderr, stderr=sys.stderr)
    if completed.returncode != 0:
        raise SystemExit(f"failed (exit {completed.returncode}): {' '.join(command)}")


def optimum_onnx(model: Path, out: Path) -> Contender:
    _run(["optimum-cli", "export", "onnx", "-m", str(model), "--task",
          "text-generation-with-past", str(out)])  # fmt: skip
    files = sorted(p.name for p in out.iterdir() if p.name.startswith("model.onnx"))
    return Contender("optimum-cli onnx fp32", "onnxruntime", out, "model.onnx", files)


def optimum_openvino_int4(model: Path, out: Path) -> Contender:
    _run(["optimum-cli", "export", "openvino", "-m", str(model), "--task",
          "text-generation-with-past", "--weight-format", "int4", str(out)])  # fmt: skip
    files = ["openvino_model.xml", "openvino_model.bin"]
    return Contender("optimum-cli openvino int4", "openvino", out, "openvino_model.xml", files)


def edgeport_bundle(model: Path, profile: str, out: Path) -> Contender:
    _run([sys.executable, "-m", "edgeport", "convert", str(model), "--profile", profile,
          "--out", str(out), "--force"])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    runtime = manifest["runtime"]
    model_file = runtime["model_file"]
    stem = model_file.rsplit(".", 1)[0]
    files = [f["path"] for f in manifest["files"] if f["path"].startswith(stem)]
    return Contender(
        f"edgeport {profile}: {manifest['recipe']['id']}",
        runtime["target"],
        out,
        model_file,
        files,
    )


def measure(contender: Contender, prepared: Any, info: Any, threads: int) -> dict[str, Any]:
    from edgeport.backends import Artifact, get_backend
    from edgeport.bench import measure as bench
    from edgeport.schemas import Tolerance
    from edgeport.workloads import DecoderWorkload

    artifact = Artifact(contender.directory, contender.model_file, tuple(contender.files), (), ())
    device = "CPU" if contender.target == "openvino" else "CPUExecutionProvider"
    measured = bench(
        artifact,
        contender.target,
        device,
        threads,
        prepared.bench.feeds,
        new_tokens=prepared.bench.new_tokens,
    )
    session = get_backend(contender.target).load(artifact, device, threads)
    report = DecoderWorkload().validate(info, session, prepared.evaluation, Tolerance())
    metrics = {m.name: m.value for m in report.metrics}
    return {
        "label": contender.label,
        "bytes": artifact.size_bytes,
        "tokens_per_s": measured.tokens_per_s,
        "time_to_first_token_ms": measured.time_to_first_token_ms,
        "peak_memory_mb": measured.peak_memory_mb,
        "next_token_agreement": metrics.get("next_token_agreement"),
        "perplexity_increase": metrics.get("perplexity_increase"),
        "generation_match": metrics.get("generation_match"),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    base = rows[0]

    def ratio(row: dict[str, Any], key: str) -> str:
        if not row[key] or not base[key]:
            return "-"
        return f"{row[key] / base[key]:.2f}x"

    header = (
        f"{'model':42} {'MB':>6} {'size':>6} {'tok/s':>7} {'speed':>6} {'TTFT ms':>8} "
        f"{'TTFT':>6} {'mem MB':>7} {'mem':>6} {'agree':>6} {'ppl Δ':>7} {'gen':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['label'][:42]:42} {row['bytes'] / 1e6:6.2f} {ratio(row, 'bytes'):>6} "
            f"{row['tokens_per_s']:7.1f} {ratio(row, 'tokens_per_s'):>6} "
            f"{row['time_to_first_token_ms']:8.1f} {ratio(row, 'time_to_first_token_ms'):>6} "
            f"{row['peak_memory_mb']:7.1f} {ratio(row, 'peak_memory_mb'):>6} "
            f"{row['next_token_agreement']:6.3f} {row['perplexity_increase'] * 100:+6.2f}% "
            f"{row['generation_match']:5.2f}"
        )
    print("(ratios against the first row, optimum-cli's fp32 ONNX export; speed > 1x is faster)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--profile", action="append", default=None)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    profiles = args.profile or ["raspberry-pi-5", "intel-n100"]

    from edgeport.hub import resolve
    from edgeport.model_info import inspect_model
    from edgeport.samples import load_samples
    from edgeport.text_inputs import prepare_tokenizer
    from edgeport.validate import ReferenceModel
    from edgeport.workloads import DecoderWorkload

    with tempfile.TemporaryDirectory(prefix="edgeport-llm-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        info = inspect_model(resolve(str(args.model)))
        if info.family != "decoder":
            raise SystemExit(f"{args.model} is not a decoder-only language model")
        contenders = [
            optimum_onnx(args.model, work / "optimum-onnx-fp32"),
            optimum_openvino_int4(args.model, work / "optimum-openvino-int4"),
            *[edgeport_bundle(args.model, p, work / f"edgeport-{p}") for p in profiles],
        ]
        exported = type("Exported", (), {"input_names": (), "output_names": ("logits",)})()
        reference = ReferenceModel(info, trust_remote_code=False)
        prepared = DecoderWorkload().prepare(
            info,
            prepare_tokenizer(info, work, trust_remote_code=False),
            load_samples("decoder", None),
            exported,  # type: ignore[arg-type]
            reference,
        )
        del reference
        rows = [measure(c, prepared, info, args.threads) for c in contenders]
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
