#!/usr/bin/env python3
"""Side-by-side benchmark of a small language model: optimum-cli's defaults vs edgeport's choice.

    python scripts/benchmark_llm.py [MODEL] [--profile raspberry-pi-5 --profile intel-n100]
                                    [--gguf-recipe all --gguf-recipe gguf-q4_k_m]
                                    [--gguf-profile raspberry-pi-5] [--skip-llama-cpp]
                                    [--threads N] [--workdir DIR] [--json]

For the same model, the same prompt and the same validation texts, it builds

- `optimum-cli export onnx --task text-generation-with-past` (fp32; the baseline),
- `optimum-cli export openvino --weight-format int4` (optimum-intel's int4 defaults),
- `edgeport convert MODEL --profile P --recipe ...` for each profile, restricted to the
  recipes of other targets than llama.cpp (ONNX Runtime, OpenVINO: the bundles edgeport
  shipped for these profiles before its llama.cpp target; with it, the search may ship a
  GGUF, which the rows below show),
- llama.cpp's default conversion as a user does it: an f16 GGUF, then llama.cpp's
  quantiser (`llama_model_quantize`) to Q4_K_M with no importance matrix and no other
  setting (plain llama.cpp). llama.cpp's `convert_hf_to_gguf.py` is a script of its source
  tree, not an installable package, so edgeport's own writer (`gguf_writer.write_gguf` at
  f16) stands in for it; both rows say so,
- edgeport's GGUF choices: `edgeport convert MODEL --profile raspberry-pi-5 --recipe R`, one
  row per `--gguf-recipe` (repeatable; default `all`, the search among every llama.cpp
  recipe, i.e. the GGUF the search ships, and `gguf-q4_k_m`, the same file type as the plain
  row with edgeport's settings),

and measures each on this host with edgeport's own tools: greedy decoding speed with the
KV cache (tokens/s), time to first token and peak memory (bench.py, one child process per
model), size of the model files, and the validation metrics against PyTorch (next-token
agreement, perplexity increase, KL divergence mean and p99, generation match;
families/text_generation.py). The GGUF rows go through the same code: bench.py's child
process and validation both load edgeport's `LlamaCppDecoderSession` (llama-cpp-python,
greedy, logits at every position), on the same prompt, token counts and texts. Every
number is also printed as a ratio against the fp32 baseline. Not a test: it takes minutes.
Without llama-cpp-python (module llama_cpp) the llama.cpp rows are skipped with a message;
`--skip-llama-cpp` skips them on purpose.

With `--bundle RECIPE@PROFILE` (repeatable) it instead converts the model once per pair with
`edgeport convert --recipe RECIPE --accept-degraded` and times each bundle's own `run.py`
(the code the device runs) in interleaved rounds, so every row shares the host's state:

    python scripts/benchmark_llm.py --smollm2-shape          # issue 17's protocol
    python scripts/benchmark_llm.py MODEL --bundle onnx-fp32@raspberry-pi-5 \
        --bundle onnx-int4-weight@raspberry-pi-5 --bundle openvino-int4-weight@intel-n100

Without `--bundle` the pairs are every target's 4-bit bundle beside ONNX Runtime's fp32:
onnx-int4-weight, openvino-int4-weight and, when llama-cpp-python is installed,
gguf-iq4_xs (the GGUF the search ships for raspberry-pi-5).

`--smollm2-shape` builds a randomly initialised model of SmolLM2-135M's shape (Llama, 30
layers, hidden 576, tied embeddings, vocabulary 49152) in the work folder: speed depends
on shapes, not on trained weights, and no download is needed. Accuracy does depend on
them, so the same run then converts the trained tiny-llama-pydoc with each 4-bit pair,
gated as a user would (no --accept-degraded), and prints the verdicts and metrics.
It prints prefill and decode tokens/s, time to first token, peak resident memory of the
run.py process and model size per bundle, each also as a ratio against the first bundle
(ONNX Runtime fp32), plus this host's CPU and ISA flags: a speed measured here says
nothing about another CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "tiny-llama-pydoc"
DEFAULT_BUNDLES = [
    "onnx-fp32@raspberry-pi-5",
    "onnx-int4-weight@raspberry-pi-5",
    "openvino-int4-weight@intel-n100",
]
# Every target's 4-bit bundle: llama.cpp's too, when llama-cpp-python is installed. IQ4_XS
# is the GGUF edgeport's search ships for raspberry-pi-5 (tiny-llama-pydoc); Q4_K_M is not a
# 4-bit file on SmolLM2's shape: its 256-value K-quant blocks do not fit 576-wide rows, so
# llama.cpp (and edgeport) store most matrices as Q5_0 instead (`--bundle
# gguf-q4_k_m@raspberry-pi-5` measures it).
LLAMA_CPP_BUNDLE = "gguf-iq4_xs@raspberry-pi-5"
PROMPT = "The with statement is used to"
TINY_AGREEMENT = 0.95  # what the trained tiny model's 4-bit bundles must keep (issue 17)
SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M's config.json, shapes only
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


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


def edgeport_bundle(
    model: Path, profile: str, out: Path, recipes: Sequence[str] = (), what: str = ""
) -> Contender:
    only = [arg for recipe in recipes for arg in ("--recipe", recipe)]
    _run([sys.executable, "-m", "edgeport", "convert", str(model), "--profile", profile,
          *only, "--out", str(out), "--force"])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    runtime = manifest["runtime"]
    model_file = runtime["model_file"]
    stem = model_file.rsplit(".", 1)[0]
    files = [f["path"] for f in manifest["files"] if f["path"].startswith(stem)]
    return Contender(
        f"edgeport {profile}{what}: {manifest['recipe']['id']}",
        runtime["target"],
        out,
        model_file,
        files,
    )


def recipe_ids(llama_cpp: bool) -> list[str]:
    """The catalogue's recipes for llama.cpp (GGUF), or for every other target."""
    from edgeport.catalog import load_catalog

    recipes = load_catalog().recipes.values()
    return sorted(r.id for r in recipes if (r.target == "llama.cpp") == llama_cpp)


def llama_cpp_missing() -> str:
    """Why the llama.cpp rows cannot be measured here ('' when they can)."""
    try:
        import gguf  # noqa: F401  (edgeport's GGUF writer)
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or exc} is not importable (pip install llama-cpp-python gguf)"
    return ""


def llama_cpp_plain(model: Path, out: Path, threads: int) -> list[Contender]:
    """llama.cpp's default path: f16 GGUF, then `llama_model_quantize` to Q4_K_M with its
    default parameters (no importance matrix, no per-tensor types, no embedding type).
    edgeport's writer stands in for convert_hf_to_gguf.py, which is not installable."""
    import ctypes

    import llama_cpp

    from edgeport.backends.gguf_writer import write_gguf

    f16_dir, q4_dir = out / "f16", out / "q4_k_m"
    f16_dir.mkdir(parents=True, exist_ok=True)
    q4_dir.mkdir(parents=True, exist_ok=True)
    f16 = f16_dir / "model.gguf"
    print(
        f"$ write_gguf({model}, {f16}, 'f16')  # stand-in for convert_hf_to_gguf.py",
        file=sys.stderr,
    )
    write_gguf(model, f16, "f16")
    q4 = q4_dir / "model.gguf"
    print(
        f"$ llama_model_quantize({f16}, {q4}, Q4_K_M)  # = llama-quantize F16 Q4_K_M",
        file=sys.stderr,
    )
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = max(1, threads)
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    status = llama_cpp.llama_model_quantize(
        str(f16).encode(), str(q4).encode(), ctypes.byref(params)
    )
    if status != 0 or not q4.is_file():
        raise SystemExit(f"llama_model_quantize failed ({status})")
    # *: the f16 GGUF is edgeport's writer's, standing in for convert_hf_to_gguf.py.
    return [
        Contender("llama.cpp f16 GGUF*", "llama.cpp", f16_dir, f16.name, [f16.name]),
        Contender(
            "llama.cpp Q4_K_M plain (llama-quantize f16*)",
            "llama.cpp",
            q4_dir,
            q4.name,
            [q4.name],
        ),
    ]


def _artifact(contender: Contender) -> tuple[Any, Any, str]:
    from edgeport.backends import Artifact
    from edgeport.catalog import load_targets

    artifact = Artifact(contender.directory, contender.model_file, tuple(contender.files), (), ())
    device = {"openvino": "CPU", "llama.cpp": "CPU"}.get(contender.target, "CPUExecutionProvider")
    return artifact, load_targets()[contender.target], device


def time_rounds(
    contenders: list[Contender], prepared: Any, threads: int, rounds: int
) -> list[list[Any]]:
    """bench.py (a child process each: warm-up, then the median of its runs) for every
    contender once per round, interleaved, so a load that comes and goes on the host
    touches every row alike."""
    from edgeport.bench import measure as bench

    runs: list[list[Any]] = [[] for _ in contenders]
    for index in range(rounds):
        print(f"timing round {index + 1}/{rounds}", file=sys.stderr)
        for contender, done in zip(contenders, runs, strict=True):
            artifact, target, device = _artifact(contender)
            done.append(
                bench(
                    artifact,
                    target,
                    device,
                    threads,
                    prepared.bench.feeds,
                    new_tokens=prepared.bench.new_tokens,
                )
            )
    return runs


def measure(
    contender: Contender,
    prepared: Any,
    info: Any,
    threads: int,
    timed: list[Any],
    base: list[Any],
) -> dict[str, Any]:
    from edgeport.backends import get_backend
    from edgeport.families.text_generation import TextGeneration as DecoderWorkload
    from edgeport.schemas import Tolerance

    artifact, target, device = _artifact(contender)
    session = get_backend(target).load(artifact, device, threads)
    report = DecoderWorkload().validate(info, session, prepared.evaluation, Tolerance())
    metrics = {m.name: m.value for m in report.metrics}
    prompt_tokens = int(prepared.bench.feeds["input_ids"].shape[-1])
    ttft = statistics.median(m.time_to_first_token_ms for m in timed)
    # Paired: each round's number over the baseline's in the same round.
    decode = [m.tokens_per_s / b.tokens_per_s for m, b in zip(timed, base, strict=True)]
    prompt = [
        b.time_to_first_token_ms / m.time_to_first_token_ms
        for m, b in zip(timed, base, strict=True)
    ]
    return {
        "label": contender.label,
        "target": contender.target,
        "bytes": artifact.size_bytes,
        "prompt_tokens": prompt_tokens,
        "new_tokens": prepared.bench.new_tokens,
        "rounds": len(timed),
        "tokens_per_s": statistics.median(m.tokens_per_s for m in timed),
        "tokens_per_s_runs": [round(m.tokens_per_s, 1) for m in timed],
        "speedup_paired": statistics.median(decode),
        # The prompt and the first new token, as the time to first token measures them.
        "prompt_tokens_per_s": prompt_tokens / (ttft / 1000) if ttft else None,
        "prompt_speedup_paired": statistics.median(prompt),
        "time_to_first_token_ms": ttft,
        "peak_memory_mb": statistics.median(m.peak_memory_mb for m in timed),
        "next_token_agreement": metrics.get("next_token_agreement"),
        "perplexity_increase": metrics.get("perplexity_increase"),
        "kl_divergence_mean": metrics.get("kl_divergence_mean"),
        "kl_divergence_p99": metrics.get("kl_divergence_p99"),
        "generation_match": metrics.get("generation_match"),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    base = rows[0]

    def ratio(row: dict[str, Any], key: str) -> str:
        if not row[key] or not base[key]:
            return "-"
        return f"{row[key] / base[key]:.2f}x"

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    width = max(42, *(len(row["label"]) for row in rows))
    header = (
        f"{'model':{width}} {'MB':>6} {'size':>6} {'tok/s':>7} {'speed':>6} {'prompt/s':>8} "
        f"{'prompt':>6} {'TTFT ms':>8} {'TTFT':>6} {'mem MB':>7} {'mem':>6} {'agree':>6} "
        f"{'ppl Δ':>7} {'KL mean':>8} {'KL p99':>7} {'gen':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ppl = row["perplexity_increase"]
        print(
            f"{row['label']:{width}} {row['bytes'] / 1e6:6.2f} {ratio(row, 'bytes'):>6} "
            f"{row['tokens_per_s']:7.1f} {row['speedup_paired']:5.2f}x "
            f"{number(row['prompt_tokens_per_s'], '.1f'):>8} "
            f"{row['prompt_speedup_paired']:5.2f}x "
            f"{row['time_to_first_token_ms']:8.1f} {ratio(row, 'time_to_first_token_ms'):>6} "
            f"{row['peak_memory_mb']:7.1f} {ratio(row, 'peak_memory_mb'):>6} "
            f"{number(row['next_token_agreement'], '.3f'):>6} "
            f"{'-' if ppl is None else f'{ppl * 100:+6.2f}%':>7} "
            f"{number(row['kl_divergence_mean'], '.4f'):>8} "
            f"{number(row['kl_divergence_p99'], '.3f'):>7} "
            f"{number(row['generation_match'], '.2f'):>5}"
        )
    print(
        "(ratios against the first row, optimum-cli's fp32 ONNX export; speed and prompt > 1x "
        f"are faster; every row: the same {base['prompt_tokens']}-token prompt, "
        f"{base['new_tokens']} greedy new tokens; {base['rounds']} interleaved rounds of "
        "bench.py (a child process each, warm-up then the median of its runs), medians over "
        "the rounds; speed, prompt: median of the per-round ratios to the first row; "
        "prompt/s: prompt tokens over the time to first token; mem: the "
        "child's peak RSS above its own start; agree, ppl Δ, KL (nats, "
        "KL(PyTorch || model) per position), gen: edgeport's validation against PyTorch on "
        "the same texts)"
    )
    if any(row.get("target") == "llama.cpp" for row in rows):
        print(
            "(llama.cpp rows: llama-cpp-python through edgeport's LlamaCppDecoderSession, CPU, "
            "logits at every position as the converter validates; 'plain' is llama.cpp's "
            "default llama_model_quantize Q4_K_M of the f16 GGUF, no importance matrix, no "
            "other setting; *: that f16 GGUF is written by edgeport's gguf_writer.write_gguf "
            "as a stand-in for llama.cpp's convert_hf_to_gguf.py, which is not installable)"
        )


# ----------------------------------------------------------------- host


def host_cpu() -> str:
    """This host's CPU model and the ISA flags edgeport's profiles speak of."""
    import platform

    from edgeport.host import cpu_model_name, features_from_cpuinfo

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(encoding="utf-8") if cpuinfo.is_file() else ""
    name = cpu_model_name(text) or platform.processor() or platform.machine()
    features = features_from_cpuinfo(text) if text else []
    return f"{name}; {os.cpu_count()} cores; ISA: {' '.join(features) or 'unknown'}"


# ----------------------------------------------------------------- bundles timed by run.py


def smollm2_shaped(folder: Path) -> Path:
    """A random model of SmolLM2-135M's shape with tiny-llama-pydoc's tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(DEFAULT_MODEL / name, folder / name)
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M)  # type: ignore[no-untyped-call]
    LlamaForCausalLM(config).save_pretrained(str(folder))  # type: ignore[no-untyped-call]
    return folder


@dataclass
class Bundle:
    label: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def model_bytes(self) -> int:
        stem = self.manifest["runtime"]["model_file"].rsplit(".", 1)[0]
        return sum(f["bytes"] for f in self.manifest["files"] if f["path"].startswith(stem))


def convert_bundle(model: Path, pair: str, out: Path) -> Bundle:
    recipe, _, profile = pair.partition("@")
    if not profile:
        raise SystemExit(f"--bundle wants RECIPE@PROFILE, got {pair!r}")
    if not (out / "manifest.json").is_file():
        _run([sys.executable, "-m", "edgeport", "convert", str(model), "--profile", profile,
              "--recipe", recipe, "--accept-degraded", "--out", str(out), "--force"])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return Bundle(pair, out, manifest)


def tiny_gates(pairs: Sequence[str], work: Path) -> list[dict[str, Any]]:
    """The same 4-bit recipes on the trained tiny model, gated as a user converts it (no
    --accept-degraded): speed on random weights says nothing about accuracy, this does."""
    rows = []
    for pair in pairs:
        recipe, _, profile = pair.partition("@")
        if recipe.endswith("fp32"):
            continue
        out = work / f"tiny--{pair.replace('@', '--')}"
        if not (out / "manifest.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "edgeport", "convert", str(DEFAULT_MODEL), "--profile",
                 profile, "--recipe", recipe, "--out", str(out), "--force"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        manifest_path = out / "manifest.json"
        manifest = json.loads(manifest_path.read_text("utf-8")) if manifest_path.is_file() else {}
        metrics = manifest.get("metrics", {})
        rows.append(
            {
                "label": pair,
                "verdict": manifest.get("verdict", "failed (no bundle written)"),
                "next_token_agreement": metrics.get("next_token_agreement"),
                "perplexity_increase": metrics.get("perplexity_increase"),
            }
        )
    return rows


def print_tiny_gates(rows: list[dict[str, Any]]) -> None:
    print(
        f"accuracy gates on the trained {DEFAULT_MODEL.name} "
        "(edgeport convert, no --accept-degraded):"
    )
    for row in rows:
        agreement, perplexity = row["next_token_agreement"], row["perplexity_increase"]
        numbers = (
            f"next-token agreement {agreement:.3f} "
            f"({'at least' if agreement >= TINY_AGREEMENT else 'below'} {TINY_AGREEMENT}), "
            f"perplexity {perplexity:+.2%}"
            if agreement is not None and perplexity is not None
            else "no metrics"
        )
        print(f"  {row['label']:38} {row['verdict']}: {numbers}")


# A small launcher between this (large) process and run.py: a forked child starts with
# its parent's resident set, and Linux keeps ru_maxrss across exec, so run.py's own peak is
# only visible from a parent that is small itself.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def time_run_py(bundle: Bundle, prompt: str, new_tokens: int, threads: int) -> dict[str, Any]:
    """One `run.py --json` in its own process, with that process's peak resident memory."""
    command = [sys.executable, str(bundle.directory / "run.py"), prompt, "--json",
               "--max-new-tokens", str(new_tokens), "--threads", str(threads)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "maxrss"
        completed = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, str(peak), *command],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode:
            raise SystemExit(
                f"{bundle.label}: run.py failed ({completed.returncode}): "
                f"{completed.stderr[-2000:]}"
            )
        kib = int(peak.read_text(encoding="utf-8"))  # Linux reports KiB
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = kib / 1024
    return result


def measure_bundles(
    bundles: list[Bundle], prompt: str, new_tokens: int, threads: int, rounds: int
) -> list[dict[str, Any]]:
    """Interleaved rounds (every bundle once per round), medians per bundle."""
    runs: dict[str, list[dict[str, Any]]] = {b.label: [] for b in bundles}
    for bundle in bundles:  # warm the page cache: the first load reads the file from disk
        time_run_py(bundle, prompt, 2, threads)
    for index in range(rounds):
        print(f"round {index + 1}/{rounds}", file=sys.stderr)
        for bundle in bundles:
            runs[bundle.label].append(time_run_py(bundle, prompt, new_tokens, threads))
    rows = []
    base = runs[bundles[0].label]
    for bundle in bundles:
        done = runs[bundle.label]
        ttft = statistics.median(r["time_to_first_token_ms"] for r in done)
        # Paired: each round's speed over the first bundle's in the same round, so a load
        # that comes and goes on the host cancels out of the ratio.
        paired = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(done, base, strict=True)]
        metrics = bundle.manifest.get("metrics", {})
        rows.append(
            {
                "label": bundle.label,
                "recipe": bundle.manifest["recipe"]["id"],
                "verdict": bundle.manifest.get("verdict"),
                "accuracy_level": bundle.manifest["recipe"]["quantize"].get("accuracy_level"),
                "bytes": bundle.model_bytes,
                "prompt_tokens": done[0]["prompt_tokens"],
                "new_tokens": done[0]["new_tokens"],
                "prefill_tokens_per_s": done[0]["prompt_tokens"] / (ttft / 1000),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in done),
                "tokens_per_s_runs": [r["tokens_per_s"] for r in done],
                "speedup_paired": statistics.median(paired),
                "speedup_runs": [round(x, 2) for x in paired],
                "time_to_first_token_ms": ttft,
                "peak_memory_mb": statistics.median(r["peak_rss_mb"] for r in done),
                "next_token_agreement": metrics.get("next_token_agreement"),
            }
        )
    return rows


def print_bundle_table(rows: list[dict[str, Any]]) -> None:
    base = rows[0]

    def ratio(row: dict[str, Any], key: str) -> str:
        return f"{row[key] / base[key]:.2f}x" if row[key] and base[key] else "-"

    header = (
        f"{'bundle (recipe@profile)':38} {'MB':>7} {'size':>6} {'prefill/s':>9} "
        f"{'decode/s':>8} {'speed':>6} {'TTFT ms':>8} {'RSS MB':>7} {'agree':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        agree = row["next_token_agreement"]
        print(
            f"{row['label'][:38]:38} {row['bytes'] / 1e6:7.1f} {ratio(row, 'bytes'):>6} "
            f"{row['prefill_tokens_per_s']:9.1f} {row['tokens_per_s']:8.2f} "
            f"{row['speedup_paired']:5.2f}x {row['time_to_first_token_ms']:8.1f} "
            f"{row['peak_memory_mb']:7.0f} {'-' if agree is None else f'{agree:.3f}':>6}"
        )
    print(
        f"(medians of {len(rows[0]['tokens_per_s_runs'])} interleaved rounds of each bundle's "
        f"run.py, {rows[0]['prompt_tokens']} prompt tokens, {rows[0]['new_tokens']} new; size: "
        "against the first row; speed: median of the per-round ratios to the first row; "
        "agree: next-token agreement with PyTorch from the manifest)"
    )
    by_recipe = {row["recipe"]: row for row in rows}
    fp32 = by_recipe.get("onnx-fp32")
    if fp32:
        for int4 in rows:
            if int4 is not fp32:
                print(
                    f"{int4['recipe']}: {int4['speedup_paired']:.2f}x ONNX Runtime fp32's decode "
                    f"speed (rounds: {int4['speedup_runs']}), {int4['bytes'] / fp32['bytes']:.3f} "
                    "of its size"
                )
    ort4, ov4 = by_recipe.get("onnx-int4-weight"), by_recipe.get("openvino-int4-weight")
    if ort4 and ov4:
        rounds = [
            a / b for a, b in zip(ort4["tokens_per_s_runs"], ov4["tokens_per_s_runs"], strict=True)
        ]
        print(
            f"onnx-int4-weight decodes at {statistics.median(rounds):.2f}x "
            f"openvino-int4-weight's speed (rounds: {[round(x, 2) for x in rounds]})"
        )


def bundles_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeport-llm-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = smollm2_shaped(work / "smollm2-135m-shaped") if args.smollm2_shape else args.model
        pairs = args.bundle or DEFAULT_BUNDLES
        if not args.bundle:
            missing = "as --skip-llama-cpp asks" if args.skip_llama_cpp else llama_cpp_missing()
            if missing:
                print(f"llama.cpp row skipped: {missing}", file=sys.stderr)
            else:
                pairs = [*pairs, LLAMA_CPP_BUNDLE]
        bundles = [convert_bundle(model, pair, work / pair.replace("@", "--")) for pair in pairs]
        rows = measure_bundles(bundles, args.prompt, args.max_new_tokens, args.threads, args.rounds)
        gates = tiny_gates(pairs, work) if args.smollm2_shape else []
    print(f"host: {host_cpu()}; {args.threads} threads")
    print(f"model: {'SmolLM2-135M shape, random weights' if args.smollm2_shape else args.model}")
    print_bundle_table(rows)
    if gates:
        print_tiny_gates(gates)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--profile", action="append", default=None)
    parser.add_argument(
        "--gguf-recipe",
        action="append",
        default=None,
        metavar="RECIPE",
        help="one edgeport GGUF row with this recipe ('all': the search among every GGUF "
        "recipe); default: all and gguf-q4_k_m",
    )
    parser.add_argument(
        "--gguf-profile",
        default="raspberry-pi-5",
        help="profile of edgeport's GGUF row (default raspberry-pi-5)",
    )
    parser.add_argument(
        "--skip-llama-cpp", action="store_true", help="leave out the llama.cpp (GGUF) rows"
    )
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument(
        "--bundle",
        action="append",
        default=None,
        metavar="RECIPE@PROFILE",
        help="convert with this recipe for this profile and time the bundle's run.py",
    )
    parser.add_argument(
        "--smollm2-shape",
        action="store_true",
        help="benchmark a random model of SmolLM2-135M's shape (implies the run.py mode)",
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--speed-rounds",
        type=int,
        default=3,
        help="interleaved timing rounds of every model (the default, optimum-cli mode)",
    )
    args = parser.parse_args()
    if args.bundle or args.smollm2_shape:
        return bundles_main(args)
    print(f"host: {host_cpu()}; {args.threads} threads")
    profiles = args.profile or ["raspberry-pi-5", "intel-n100"]

    from edgeport.families.text_generation import TextGeneration as DecoderWorkload
    from edgeport.hub import resolve
    from edgeport.model_info import inspect_model
    from edgeport.samples import load_samples
    from edgeport.text_inputs import prepare_tokenizer
    from edgeport.validate import ReferenceModel

    with tempfile.TemporaryDirectory(prefix="edgeport-llm-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        info = inspect_model(resolve(str(args.model)))
        if info.family != "decoder":
            raise SystemExit(f"{args.model} is not a decoder-only language model")
        contenders = [
            optimum_onnx(args.model, work / "optimum-onnx-fp32"),
            optimum_openvino_int4(args.model, work / "optimum-openvino-int4"),
            *[
                edgeport_bundle(
                    args.model, p, work / f"edgeport-{p}", recipe_ids(False), " (no GGUF)"
                )
                for p in profiles
            ],
        ]
        missing = "as --skip-llama-cpp asks" if args.skip_llama_cpp else llama_cpp_missing()
        if missing:
            print(f"llama.cpp rows skipped: {missing}")
        else:
            contenders += llama_cpp_plain(args.model, work / "llama.cpp-plain", args.threads)
            for choice in args.gguf_recipe or ["all", "gguf-q4_k_m"]:
                recipes = recipe_ids(True) if choice == "all" else [choice]
                what = " (GGUF search)" if choice == "all" else " (GGUF)"
                contenders.append(
                    edgeport_bundle(
                        args.model,
                        args.gguf_profile,
                        work / f"edgeport-{args.gguf_profile}-{choice}",
                        recipes,
                        what,
                    )
                )
        exported = type("Exported", (), {"input_names": (), "output_names": ("logits",)})()
        reference = ReferenceModel(info, trust_remote_code=False)
        prepared = DecoderWorkload().prepare(
            info,
            prepare_tokenizer(info, work, trust_remote_code=False),
            load_samples("decoder", None),
            exported,
            reference,
        )
        del reference
        timed = time_rounds(contenders, prepared, args.threads, args.speed_rounds)
        rows = [
            measure(c, prepared, info, args.threads, t, timed[0])
            for c, t in zip(contenders, timed, strict=True)
        ]
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
