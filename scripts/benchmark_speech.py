#!/usr/bin/env python3
"""Where edgeport stands against optimum-cli's defaults on one Whisper model, in one run.

    python scripts/benchmark_speech.py [--model MODEL_DIR] [--profile PROFILE]
                                       [--utterances N] [--repeats N] [--threads N]
                                       [--work DIR] [--json]

For the same utterances (edgeport's built-in validation speech, synthesised by espeak-ng
in several voices, speeds and noises, never used for calibration) turned into the same
log-mel features (ondevice.whisper_features), it builds

  1. optimum-cli export onnx --task automatic-speech-recognition-with-past
                                                             -- the baseline (ratio 1.00)
  2. optimum-cli onnxruntime quantize --<host preset>        -- optimum's dynamic int8
  3. optimum-cli export openvino (default weights)
  4. optimum-cli export openvino --weight-format int8        -- int8 weights only
  5. edgeport convert --profile PROFILE                      -- whatever edgeport ships

and prints, per row: the real-time factor (compute seconds / audio seconds: encoder and
greedy decoding through the KV cache, median of the repeats) and its ratio to the
baseline, the size of the model files and its ratio, the peak resident memory of a
process that runs the model, and the agreement with the PyTorch original's greedy
transcripts (the share of utterances with identical token ids, and the word error rate
of the row's transcripts against the original's). A row whose tool fails is a row with
the error, not a crash.

Every row runs through one code path, edgeport's on-device module (ondevice.py:
load_runtime, whisper_features, encode, greedy_decode), in a process of its own: optimum's
folders with edgeport's ondevice.py and the original model's decoding rules, edgeport's
bundle with its own ondevice.py and manifest, as run.py runs it. So the rows share the
runtime settings (ONNX Runtime session options, OpenVINO's f32 CPU config, one stream)
and the thread count (1 by default) and differ only in the model files. The numbers come
from this build host: they rank the rows here and say nothing absolute about the device
the profile describes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_llm import LAUNCHER
from benchmark_vision import (
    NOTE,
    host_description,
    model_bytes,
    optimum_cli,
    quantize_preset,
    run_tool,
)

ASR_TASK = "automatic-speech-recognition-with-past"
FEATURES = "input_features"
PREPROCESSOR = "preprocessor_config.json"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "examples" / "speech" / "tiny-whisper"
ONDEVICE = REPO / "edgeport" / "runners" / "ondevice.py"
# The graphs each optimum folder runs: the encoder and the merged decoder (one graph for
# the first step and the cached ones); the other decoders optimum writes are not counted.
ONNX_PARTS = ("encoder_model.onnx", "decoder_model_merged.onnx")
QUANTIZED_PARTS = ("encoder_model_quantized.onnx", "decoder_model_merged_quantized.onnx")
OPENVINO_PARTS = ("openvino_encoder_model.xml", "openvino_decoder_model.xml")
MODEL_SUFFIXES = (".onnx", ".onnx_data", ".xml", ".bin")


@dataclass
class Row:
    label: str
    runtime: str  # ondevice.RUNTIMES key: "onnxruntime" or "openvino"
    command: str
    directory: Path | None = None
    model_files: list[str] = field(default_factory=list)  # the graphs and weights it runs
    # Model files the tool wrote that this row does not run (optimum's other decoders),
    # with their sizes in bytes.
    unused_files: dict[str, int] = field(default_factory=dict)
    # ondevice.load_runtime's spec: the manifest's runtime for edgeport's bundle; for
    # optimum's folders the same shape, built from their file names.
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    ondevice: Path = ONDEVICE  # the ondevice.py the row runs with
    preprocessor: Path | None = None
    build_s: float = 0.0
    error: str | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    rtf: float | None = None
    rtf_ratio: float | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    tokens_stable: bool | None = None  # the same ids in every repeat
    metrics: dict[str, float] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["directory"] = None  # a temporary folder, gone when the script ends
        data["ondevice"] = None if self.ondevice == ONDEVICE else "the bundle's own"
        data["preprocessor"] = None
        del data["spec"]  # the manifest's runtime section: labels and all, not a result
        return data


# ----------------------------------------------------------------------------- building


def folder_row(
    label: str,
    runtime: str,
    command: list[str],
    out: Path,
    parts: Sequence[str],
    rules: dict[str, Any],
    log: Path,
) -> Row:
    """A row for an optimum-cli output folder: the tool run, the two graphs it runs."""
    row = Row(label, runtime, " ".join(command))
    row.build_s, row.error = run_tool(command, log)
    if row.error is not None:
        return row
    missing = [name for name in parts if not (out / name).is_file()]
    if missing:
        written = sorted(p.name for p in out.iterdir() if p.suffix in MODEL_SUFFIXES)
        row.error = f"no {', '.join(missing)} in the output folder (it has {written})"
        return row
    encoder, decoder = parts
    row.directory = out
    row.spec = {
        "runner": runtime,
        "task": ASR_TASK,
        "model_file": encoder,
        "decoding": rules,
        "parts": [
            {"name": "encoder", "model_file": encoder, "input_names": [FEATURES]},
            {"name": "decoder", "model_file": decoder, "input_names": ["input_ids"]},
        ],
    }
    row.size_bytes = sum(model_bytes(out, name) for name in parts)
    stems = tuple(name.rsplit(".", 1)[0] + "." for name in parts)
    for path in sorted(out.iterdir()):
        if path.suffix not in MODEL_SUFFIXES:
            continue
        if path.name.startswith(stems):
            row.model_files.append(path.name)
        else:
            row.unused_files[path.name] = path.stat().st_size
    return row


def edgeport_row(model: Path, profile: str, out: Path, log: Path) -> Row:
    command = [sys.executable, "-m", "edgeport", "convert", str(model), "--profile", profile,
               "--out", str(out), "--force", "--json"]  # fmt: skip
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
    row.directory, row.spec = bundle, dict(runtime)
    row.ondevice = bundle / "ondevice.py"  # the bundle's own code, as run.py runs it
    row.preprocessor = bundle / str(runtime.get("preprocessor") or PREPROCESSOR)
    parts = runtime.get("parts") or [{"files": [runtime["model_file"]]}]
    row.model_files = [str(name) for part in parts for name in part.get("files", [])]
    # The manifest lists what ships; the model's share is the files of its parts.
    sizes = {str(f["path"]): int(f["bytes"]) for f in manifest["files"]}
    row.size_bytes = sum(sizes.get(name, 0) for name in row.model_files)
    return row


def build_rows(args: argparse.Namespace, rules: dict[str, Any], work: Path) -> list[Row]:
    from edgeport.host import probe_cpu

    model, cli = str(args.model), optimum_cli() or "optimum-cli"
    logs = work / "logs"
    logs.mkdir()
    onnx = work / "onnx"
    export = [cli, "export", "onnx", "--model", model, "--task", ASR_TASK, str(onnx)]
    rows = [
        folder_row(
            "optimum-cli export onnx (fp32)",
            "onnxruntime",
            export,
            onnx,
            ONNX_PARTS,
            rules,
            logs / "onnx.log",
        )
    ]
    cpu = probe_cpu()  # honours EDGEPORT_HOST_FEATURES, like `--profile host`
    preset = quantize_preset(cpu.features, cpu.arch)
    label = f"optimum-cli onnxruntime quantize --{preset or '?'} (dynamic int8)"
    quantized = work / "onnx-quantized"
    # optimum-cli quantises every *.onnx of the folder (all four graphs of the export).
    quantize = [cli, "onnxruntime", "quantize", "--onnx_model", str(onnx), f"--{preset}",
                "-o", str(quantized)]  # fmt: skip
    if preset is None:
        rows.append(Row(label, "onnxruntime", "", error="no optimum preset for this host's ISA"))
    elif rows[0].error:
        rows.append(Row(label, "onnxruntime", " ".join(quantize), error="no ONNX export"))
    else:
        rows.append(
            folder_row(
                label,
                "onnxruntime",
                quantize,
                quantized,
                QUANTIZED_PARTS,
                rules,
                logs / "quantize.log",
            )
        )
    for weights in (None, "int8"):
        out = work / f"openvino-{weights or 'default'}"
        option = ["--weight-format", weights] if weights else []
        command = [cli, "export", "openvino", "--model", model, "--task", ASR_TASK,
                   *option, str(out)]  # fmt: skip
        rows.append(
            folder_row(
                f"optimum-cli export openvino {' '.join(option) or '(default)'}",
                "openvino",
                command,
                out,
                OPENVINO_PARTS,
                rules,
                logs / f"openvino-{weights or 'default'}.log",
            )
        )
    rows.append(edgeport_row(args.model, args.profile, work / "bundle", logs / "edgeport.log"))
    base_size = rows[0].size_bytes
    for row in rows:
        if row.size_bytes is not None and base_size:
            row.size_ratio = row.size_bytes / base_size
    return rows


# ----------------------------------------------------------------------------- the worker


def load_ondevice(path: Path) -> Any:
    """An ondevice.py as the module `ondevice`, as a bundle's run.py imports its own."""
    spec = importlib.util.spec_from_file_location("ondevice", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ondevice"] = module
    spec.loader.exec_module(module)
    return module


def worker(job_file: Path) -> int:
    """One row in a process of its own (this script with --worker): load, one untimed
    warm-up utterance, then every utterance once, timed. Writes the job's result file."""
    sys.dont_write_bytecode = True  # no __pycache__ beside a bundle's ondevice.py
    job = json.loads(job_file.read_text(encoding="utf-8"))
    ondevice = load_ondevice(Path(job["ondevice"]))
    config = json.loads(Path(job["preprocessor"]).read_text(encoding="utf-8"))
    with np.load(job["samples"]) as archive:
        utterances = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    start = time.perf_counter()
    run, _ = ondevice.load_runtime(Path(job["directory"]), job["spec"], job["threads"])
    load_s = time.perf_counter() - start
    run({FEATURES: ondevice.whisper_features(utterances[0], config)})  # warm-up
    tokens, compute, features = [], [], []
    for samples in utterances:
        start = time.perf_counter()
        feeds = {FEATURES: ondevice.whisper_features(samples, config)}
        middle = time.perf_counter()
        ids = run(feeds)[ondevice.TOKENS]
        compute.append(time.perf_counter() - middle)
        features.append(middle - start)
        tokens.append([int(t) for t in ids])
    result = {"load_s": load_s, "compute_s": compute, "features_s": features, "tokens": tokens}
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_worker(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The worker's result for one row, with the peak resident memory of its process
    (measured by benchmark_llm's small launcher, so this large process does not count)."""
    folder.mkdir(parents=True, exist_ok=True)
    job_file, peak = folder / "job.json", folder / "maxrss"
    job = {**job, "result": str(folder / "result.json")}
    job_file.write_text(json.dumps(job), encoding="utf-8")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)]
    completed = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, str(peak), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode:
        lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
        print("\n".join(lines[-15:]), file=sys.stderr)
        raise RuntimeError(f"exit {completed.returncode}: {(lines or [''])[-1][:300]}")
    result: dict[str, Any] = json.loads(Path(job["result"]).read_text(encoding="utf-8"))
    result["peak_rss_mb"] = int(peak.read_text(encoding="utf-8")) / 1024  # Linux: KiB
    return result


# ----------------------------------------------------------------------------- measuring


def reference_tokens(
    model: Path, features: Sequence[Any], rules: Any, threads: int
) -> list[list[int]]:
    """The PyTorch original's greedy transcripts through the same loop (greedy_decode)."""
    import torch

    from edgeport.hub import resolve
    from edgeport.model_info import inspect_model
    from edgeport.runners import ondevice
    from edgeport.validate import ReferenceModel

    torch.set_num_threads(threads)  # the host is shared; the reference is not timed
    reference = ReferenceModel(inspect_model(resolve(str(model))), trust_remote_code=False)
    decoder = reference.seq2seq_decoder()
    return [
        ondevice.greedy_decode(decoder, reference.encoder({FEATURES: f}), rules) for f in features
    ]


def measure(
    rows: list[Row],
    args: argparse.Namespace,
    work: Path,
    waves: Sequence[Any],
    rate: int,
    reference: list[list[int]],
    reference_texts: list[str],
) -> float | None:
    """Interleaved rounds: in each, every row's worker once, in row order, so a load that
    comes and goes on a shared host hits every row alike. Returns the log-mel features'
    own real-time factor (the baseline's worker), the same numpy code for every row."""
    from edgeport.runners import ondevice

    samples = work / "utterances.npz"
    np.savez(samples, *waves)  # at the model's sampling rate
    audio_s = sum(len(w) for w in waves) / rate
    detokenizer = ondevice.Detokenizer(args.model / "tokenizer.json")
    results: dict[int, list[dict[str, Any]]] = {}
    for row_index, row in enumerate(rows):
        if row.error is None and row.directory is not None:
            results[row_index] = []
    for round_index in range(args.repeats):
        print(f"round {round_index + 1}/{args.repeats}", file=sys.stderr)
        for row_index, runs in results.items():
            row = rows[row_index]
            if row.error:
                continue
            job = {
                "ondevice": str(row.ondevice),
                "preprocessor": str(row.preprocessor or args.model / PREPROCESSOR),
                "directory": str(row.directory),
                "spec": row.spec,
                "threads": args.threads,
                "samples": str(samples),
            }
            try:
                runs.append(run_worker(job, work / "runs" / f"{row_index}-{round_index}"))
            except RuntimeError as exc:  # a runtime refusing a model is a result
                row.error = str(exc)
    base = results.get(0) if rows[0].error is None else None
    for row_index, runs in results.items():
        row = rows[row_index]
        if row.error or not runs:
            continue
        rtfs = [sum(r["compute_s"]) / audio_s for r in runs]
        row.rtf = statistics.median(rtfs)
        row.load_s = statistics.median(r["load_s"] for r in runs)
        row.peak_rss_mb = statistics.median(r["peak_rss_mb"] for r in runs)
        row.tokens_stable = all(r["tokens"] == runs[0]["tokens"] for r in runs)
        if base is not None:
            # Paired per round, then the median: drift on the host cancels out.
            row.rtf_ratio = statistics.median(
                rtf / (sum(b["compute_s"]) / audio_s) for rtf, b in zip(rtfs, base, strict=True)
            )
        tokens = runs[0]["tokens"]
        row.texts = [detokenizer.decode(ids) for ids in tokens]
        row.metrics = ondevice.seq2seq_metrics(reference, tokens, reference_texts, row.texts)
    if base is None:
        return None
    return float(statistics.median(sum(r["features_s"]) / audio_s for r in base))


# ----------------------------------------------------------------------------- output


def table(rows: list[Row]) -> list[str]:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| row | runtime | build s | RTF | RTF vs base | MB | size vs base | peak RSS MB "
        "| identical | WER |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        megabytes = None if row.size_bytes is None else row.size_bytes / 1e6
        if row.error:
            lines.append(
                f"| {row.label} | {row.runtime or '-'} | {row.build_s:.1f} "
                f"| failed: {row.error} | | | | | | |"
            )
            continue
        lines.append(
            f"| {row.label} | {row.runtime} | {row.build_s:.1f} "
            f"| {number(row.rtf, '.4f')} | {number(row.rtf_ratio, '.2f')}x "
            f"| {number(megabytes, '.3f')} | {number(row.size_ratio, '.2f')}x "
            f"| {number(row.peak_rss_mb, '.0f')} "
            f"| {number(row.metrics.get('output_identical'), '.1%')} "
            f"| {number(row.metrics.get('wer'), '.2%')} |"
        )
    return lines


def unused_note(rows: list[Row]) -> list[str]:
    """What optimum wrote beside the graphs a row runs (they are not in its MB)."""
    lines = []
    for row in rows:
        if row.unused_files:
            sized = ", ".join(f"{n} ({b / 1e6:.3f} MB)" for n, b in row.unused_files.items())
            lines.append(f"- {row.label} also wrote, not run or counted: {sized}")
    return lines


@contextlib.contextmanager
def work_folder(path: Path | None) -> Iterator[Path]:
    """--work DIR, kept afterwards; else a temporary folder, removed at the end."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="edgeport-speech-bench-") as tmp:
            yield Path(tmp)
        return
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise SystemExit(f"--work {path}: not empty")
    yield path.resolve()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="folder of a Hugging Face Whisper model (default: examples/speech/tiny-whisper)",
    )
    parser.add_argument(
        "--profile", default="intel-n100", help="edgeport profile (default: intel-n100)"
    )
    parser.add_argument(
        "--utterances",
        type=int,
        default=32,
        help="built-in validation utterances to transcribe (default: 32)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed passes over the utterances per row, each in a fresh process (default: 3)",
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, every row")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the exports, bundle and logs in this (empty) folder; "
        "default: a temporary folder, removed",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    if args.utterances < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--utterances, --repeats and --threads must be >= 1")
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no Whisper model there (no config.json)")
    args.model = args.model.resolve()

    from edgeport.families.speech_recognition import FAMILY
    from edgeport.hub import resolve
    from edgeport.model_info import inspect_model
    from edgeport.runners import ondevice
    from edgeport.speech_samples import INSTALL_HINT, builtin_utterances, espeak_available

    info = inspect_model(resolve(str(args.model)))
    if info.task != ASR_TASK:
        raise SystemExit(f"{args.model}: task {info.task!r}, not speech recognition")
    if not espeak_available():
        raise SystemExit(f"the built-in speech needs espeak-ng: {INSTALL_HINT}")
    rules = FAMILY.decoding_rules(info)
    host = host_description()
    config = json.loads((args.model / PREPROCESSOR).read_text(encoding="utf-8"))
    rate = int(config.get("sampling_rate", 16000))
    utterances = builtin_utterances("validation", args.utterances)
    waves = [ondevice.resample(u.samples, u.sampling_rate, rate) for u in utterances]
    audio_s = sum(len(w) for w in waves) / rate
    print(f"PyTorch reference on {len(waves)} utterances", file=sys.stderr)
    features = [ondevice.whisper_features(w, config) for w in waves]
    reference = reference_tokens(args.model, features, rules, args.threads)
    detokenizer = ondevice.Detokenizer(args.model / "tokenizer.json")
    reference_texts = [detokenizer.decode(ids) for ids in reference]
    edits = words = 0
    for text, utterance in zip(reference_texts, utterances, strict=True):
        e, w = ondevice.word_errors(text, utterance.text)
        edits, words = edits + e, words + w
    with work_folder(args.work) as work:
        rows = build_rows(args, rules.as_spec(), work)
        bundle_rules = rows[-1].spec.get("decoding")
        features_rtf = measure(rows, args, work, waves, rate, reference, reference_texts)

    override = f" (EDGEPORT_HOST_FEATURES={host['features_override']})"
    heading = [
        f"host: {host['cpu']}; {host['arch']}; {host['cores']} usable cores; ISA: "
        f"{' '.join(host['isa']) or 'none of avx2/avx512*/vnni/amx/neon/dotprod/i8mm'}"
        + (override if host["features_override"] is not None else ""),
        f"note: {NOTE}",
        f"model: {args.model} ({ASR_TASK}); {len(utterances)} built-in validation "
        f"utterances, {audio_s:.1f} s of audio, each in one {config.get('chunk_length', 30)} s "
        f"window; {args.threads} thread(s) for every runtime",
        "",
    ]
    footer = [
        "",
        f"RTF: compute seconds (encoder + greedy decoding, at most {rules.max_new_tokens} "
        f"tokens) / audio seconds, median of {args.repeats} passes over every utterance, each "
        "in a fresh process after one warm-up utterance, rows interleaved; 'vs base': median "
        "of the per-pass ratios to the first row (< 1 is faster). Whisper encodes a padded "
        "window whatever the utterance's length, so short utterances weigh on the RTF",
        "log-mel features (numpy, the same for every row, not in the RTF): RTF "
        + ("-" if features_rtf is None else f"{features_rtf:.4f}"),
        "MB: the model's graphs and weights that the row runs; peak RSS: maximum resident "
        "memory of the process running the row (Python, numpy, the runtime, the model), "
        "median of the passes",
        "identical: utterances whose token ids equal the PyTorch original's greedy ones; "
        "WER: word error rate of the row's transcripts against the original's (not against "
        "the spoken text)",
        f"PyTorch original's WER against the text espeak-ng spoke: {edits / max(words, 1):.2%}",
        *unused_note(rows),
    ]
    if bundle_rules is not None and bundle_rules != rules.as_spec():
        footer.append(
            f"- edgeport's bundle decodes with its manifest's rules {bundle_rules}, the "
            f"optimum rows with the original's {rules.as_spec()}"
        )
    unstable = [row.label for row in rows if row.tokens_stable is False]
    if unstable:
        footer.append(f"- token ids changed between passes (first pass scored): {unstable}")
    text = "\n".join(heading + table(rows) + footer)
    if args.json:
        print(text, file=sys.stderr)  # stdout carries only the JSON object
        payload = {
            "host": host,
            "note": NOTE,
            "model": str(args.model),
            "task": ASR_TASK,
            "profile": args.profile,
            "utterances": len(utterances),
            "audio_s": audio_s,
            "threads": args.threads,
            "repeats": args.repeats,
            "decoding": rules.as_spec(),
            "features_rtf": features_rtf,
            "reference_wer_vs_spoken": edits / max(words, 1),
            "reference_texts": reference_texts,
            "spoken_texts": [u.text for u in utterances],
            "rows": [row.as_json() for row in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(text)
    return 0 if rows[0].error is None else 1


if __name__ == "__main__":
    sys.exit(main())
