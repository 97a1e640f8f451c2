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
import copy
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
GOLDEN_FILE = "golden.npz"
EXIT_OK = 0
EXIT_MALFORMED = 2
EXIT_FAILED = 3
EXIT_NO_RUNTIME = 4
DEFAULT_RUNS = 5
WARMUP_RUNS = 1
# Language models: golden data holds token windows and the reference's next token at every
# position; verify.py scores next-token agreement (the KV-cache inputs are filled in here).
DECODER_TASK = "text-generation-with-past"
NEXT_TOKEN = "next_token"
PAST_PREFIX = "past_key_values."
# Files Python itself may leave beside a script that was imported; never part of a bundle.
IGNORED_PARTS = frozenset({"__pycache__"})
# Written beside the bundle's files after conversion (`edgeport verify --on` keeps its
# device runs there): not listed in manifest.json, not hashed, not packed into archives.
DEVICE_RUNS = "device-runs"
# What a second conversion of the same model measures differently on the build host. The
# one list both the converter (edgeport/reproducibility.py) and this verifier use; never
# read from the manifest, or an edited manifest could declare its runtime volatile.
VOLATILE_FILES = ("report.md", "tradeoff.svg")
VOLATILE_FIELDS = (
    "attempts[].duration_s",
    "attempts[].measurement.latency_ms",
    "attempts[].measurement.latency_p90_ms",
    "attempts[].measurement.peak_memory_mb",
    "attempts[].measurement.tokens_per_s",
    "attempts[].measurement.time_to_first_token_ms",
    "attempts[].latency_ratio",
    "metrics.latency_ratio_vs_fp32",
    "metrics.tokens_per_s",
    "metrics.time_to_first_token_ms",
)
# content_sha256 hashes one "path sha256" line per stable file, then this line's digest.
MANIFEST_LINE = f"{MANIFEST}#stable"

Array = Any  # numpy arrays; kept loose so the file needs no typing stubs on the device
Outputs = dict[str, Array]
RunFn = Callable[[Mapping[str, Array]], Outputs]


class BundleError(Exception):
    """The bundle cannot be checked at all (exit 2) or its runtime is missing (exit 4)."""

    def __init__(self, message: str, exit_code: int = EXIT_MALFORMED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_path(bundle: Path, relative: object, field: str) -> Path:
    """`bundle / relative` for a path read from manifest.json; refuses any way out of the bundle.

    Relative POSIX paths only, written the one way edgeport writes them: no `..`, `.` or
    empty parts, no absolute or drive prefix, no backslash; and the path must still be
    inside the bundle once links are followed.
    """
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"{MANIFEST}: {field} must be a relative path inside the bundle")
    parts = relative.split("/")
    if "\\" in relative or "\0" in relative:
        problem = "backslash or NUL in the path"
    elif relative.startswith("/") or (len(parts[0]) >= 2 and parts[0][1] == ":"):
        problem = "absolute path or drive prefix"
    elif ".." in parts:
        problem = "'..' leaves the bundle"
    elif any(part in ("", ".") for part in parts) or PurePosixPath(relative).as_posix() != relative:
        problem = "not a plain relative path"
    else:
        root = bundle.resolve()
        resolved = (root / relative).resolve()
        if root not in resolved.parents:
            problem = "resolves outside the bundle (through a link)"
        else:
            return bundle / relative
    raise BundleError(f"{MANIFEST}: {field} {relative!r} is refused: {problem}")


def check_paths(bundle: Path, manifest: Mapping[str, Any]) -> None:
    """Every path the manifest names (model, golden data, files) stays inside the bundle."""
    runtime = manifest["runtime"]
    if not isinstance(runtime, dict):
        raise BundleError(f"{MANIFEST}: 'runtime' must be an object")
    checked_path(bundle, runtime.get("model_file"), "runtime.model_file")
    golden = manifest.get("golden")
    if golden is not None:
        if not isinstance(golden, dict):
            raise BundleError(f"{MANIFEST}: 'golden' must be an object")
        checked_path(bundle, golden.get("file", GOLDEN_FILE), "golden.file")
    seen: set[str] = set()
    for entry in manifest["files"]:
        checked_path(bundle, entry["path"], "files[].path")
        if entry["path"] in seen:
            raise BundleError(f"{MANIFEST}: files lists {entry['path']!r} twice")
        seen.add(entry["path"])


def load_manifest(bundle: Path) -> dict[str, Any]:
    """manifest.json, its shape and every path in it checked (run.py loads it through here)."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}; not an edgeport bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object")
    for key in ("files", "runtime"):
        if key not in manifest:
            raise BundleError(f"{path}: missing {key!r}")
    files = manifest["files"]
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
        for f in files
    ):
        raise BundleError(f"{path}: 'files' must list objects with 'path' and 'sha256'")
    check_paths(bundle, manifest)
    return manifest


# --------------------------------------------------------------------------- manifest digest


def _drop_field(node: Any, path: list[str]) -> None:
    """Remove `a.b[].c`-style `path` from `node` in place; absent parts are no error."""
    if not path or not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2])
        for item in items if isinstance(items, list) else []:
            _drop_field(item, rest)
    elif rest:
        _drop_field(node.get(head), rest)
    else:
        node.pop(head, None)


def stable_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest less what a second conversion would change: the reproducibility
    section (it holds the digests), timing fields and the entries of volatile files."""
    stable = copy.deepcopy(dict(manifest))
    stable.pop("reproducibility", None)
    for field in VOLATILE_FIELDS:
        _drop_field(stable, field.split("."))
    if isinstance(stable.get("files"), list):
        stable["files"] = [
            f
            for f in stable["files"]
            if not (isinstance(f, dict) and f.get("path") in VOLATILE_FILES)
        ]
    return stable


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest's stable part (keys sorted, compact)."""
    text = json.dumps(
        stable_manifest(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    # surrogatepass: a hand-edited manifest may hold lone surrogates; hash, never crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def content_digest(
    files: Iterable[Mapping[str, Any]],
    manifest_sha256: str,
    volatile: Iterable[str] = VOLATILE_FILES,
) -> str:
    """sha256 over one `path sha256` line per stable file, then the manifest digest's line."""
    skipped = set(volatile)
    lines = "".join(
        f"{f['path']} {f['sha256']}\n"
        for f in sorted(files, key=lambda f: str(f["path"]))
        if f["path"] not in skipped
    )
    lines += f"{MANIFEST_LINE} {manifest_sha256}\n"
    return hashlib.sha256(lines.encode("utf-8", "surrogatepass")).hexdigest()


def check_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest against the digests recorded at conversion; one failure line at most."""
    digest = manifest_digest(manifest)
    content = content_digest(manifest["files"], digest)
    note = manifest.get("reproducibility")
    recorded = note.get("manifest_sha256") if isinstance(note, dict) else None
    recorded_content = note.get("content_sha256") if isinstance(note, dict) else None
    failures = []
    if not isinstance(recorded, str) or not isinstance(recorded_content, str):
        failures.append(
            f"{MANIFEST} is unprotected: no reproducibility.manifest_sha256 (an older edgeport "
            "wrote it); its settings cannot be checked, convert the model again"
        )
    elif recorded != digest:
        failures.append(
            f"{MANIFEST} was modified after conversion: its stable part hashes to {digest}, "
            f"reproducibility.manifest_sha256 is {recorded}"
        )
    elif recorded_content != content:
        failures.append(
            f"{MANIFEST} was modified after conversion: its files and stable part give "
            f"content_sha256 {content}, reproducibility.content_sha256 is {recorded_content}"
        )
    return {"manifest_sha256": digest, "content_sha256": content, "failures": failures}


def bundle_files(bundle: Path) -> list[str]:
    """Every entry in the folder except manifest.json and the top-level device-runs
    folder, as posix paths (links included)."""
    found = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle)
        if IGNORED_PARTS & set(relative.parts) or relative.as_posix() == MANIFEST:
            continue
        if relative.parts[0] == DEVICE_RUNS:
            continue
        if path.is_symlink() or not path.is_dir():
            found.append(relative.as_posix())
    return found


def check_files(bundle: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Changed, missing and extra files, each one named."""
    expected = {entry["path"]: entry for entry in manifest["files"]}
    present = set(bundle_files(bundle))
    changed, missing = [], []
    for name, entry in sorted(expected.items()):
        path = bundle / name
        if name not in present or not path.is_file() or path.is_symlink():
            missing.append(name)
            continue
        size = entry.get("bytes")
        if (isinstance(size, int) and path.stat().st_size != size) or sha256_file(path) != entry[
            "sha256"
        ]:
            changed.append(name)
    extra = sorted(present - set(expected))
    failures = (
        [f"changed: {name} (sha256 differs from manifest.json)" for name in changed]
        + [f"missing: {name}" for name in missing]
        + [f"extra: {name} (not listed in manifest.json)" for name in extra]
    )
    return {
        "checked": len(expected),
        "changed": changed,
        "missing": missing,
        "extra": extra,
        "failures": failures,
    }


# --------------------------------------------------------------------------- runtimes


def _onnxruntime(
    bundle: Path, spec: Mapping[str, Any], threads: int | None
) -> tuple[RunFn, dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BundleError(
            "onnxruntime is not installed: pip install -r requirements.txt", EXIT_NO_RUNTIME
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(spec.get("threads", 0) or 0)
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers = [p for p in spec.get("providers") or [] if p in available] or [
        "CPUExecutionProvider"
    ]
    session = ort.InferenceSession(str(bundle / spec["model_file"]), options, providers=providers)
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    past = [
        (i.name, i.shape[1], i.shape[3], np.float16 if "float16" in i.type else np.float32)
        for i in session.get_inputs()
        if i.name.startswith(PAST_PREFIX)
    ]

    def run(feeds: Mapping[str, Array]) -> Outputs:
        results = session.run(None, {name: feeds[name] for name in input_names})
        return dict(zip(output_names, results, strict=True))

    def run_decoder(feeds: Mapping[str, Array]) -> Outputs:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        full = decoder_feeds(input_names, ids, feeds.get("attention_mask"))
        for name, heads, size, dtype in past:
            full[name] = np.zeros((ids.shape[0], heads, 0, size), dtype=dtype)
        (logits,) = session.run(["logits"], full)
        return {NEXT_TOKEN: np.asarray(logits).argmax(axis=-1)}

    info = {
        "target": "onnxruntime",
        "version": ort.__version__,
        "providers": session.get_providers(),
    }
    return (run_decoder if past else run), info


def _openvino(
    bundle: Path, spec: Mapping[str, Any], threads: int | None
) -> tuple[RunFn, dict[str, Any]]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise BundleError(
            "openvino is not installed: pip install -r requirements.txt", EXIT_NO_RUNTIME
        ) from exc
    core = ov.Core()
    available = set(core.available_devices)
    device = next(
        (
            str(d)
            for d in spec.get("providers") or [spec.get("device", "CPU")]
            if d in available or str(d).split(".")[0] in available
        ),
        "CPU",
    )
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":  # the precision edgeport validated with (AMX CPUs would pick bf16)
        config.update(
            {
                "INFERENCE_NUM_THREADS": threads or int(spec.get("threads", 0) or 0),
                "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
                "CPU_DENORMALS_OPTIMIZATION": True,
            }
        )
    compiled = core.compile_model(str(bundle / spec["model_file"]), device, config)
    input_names = [port.get_any_name() for port in compiled.inputs]
    outputs = [(port.get_any_name(), port) for port in compiled.outputs]
    request = compiled.create_infer_request()

    def run(feeds: Mapping[str, Array]) -> Outputs:
        results = request.infer({name: feeds[name] for name in input_names})
        return {name: np.array(results[port], copy=True) for name, port in outputs}

    def run_decoder(feeds: Mapping[str, Array]) -> Outputs:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        request.reset_state()  # the KV cache is the stateful model's internal state
        request.infer(decoder_feeds(input_names, ids, feeds.get("attention_mask")))
        return {NEXT_TOKEN: np.asarray(request.get_tensor("logits").data).argmax(axis=-1)}

    info = {"target": "openvino", "version": ov.__version__, "providers": [device]}
    return (run_decoder if "beam_idx" in input_names else run), info


def decoder_feeds(input_names: list[str], ids: Array, mask: Array | None) -> dict[str, Array]:
    """A full window with an empty cache: mask, positions and beam index filled in."""
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
    feeds = {"input_ids": ids}
    if "attention_mask" in input_names:
        feeds["attention_mask"] = mask
    if "position_ids" in input_names:
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)
    if "beam_idx" in input_names:
        feeds["beam_idx"] = np.arange(ids.shape[0], dtype=np.int32)
    return feeds


# target id (manifest runtime.target) -> loader(bundle, runtime spec, threads) -> (run, info).
# A new runtime adds one loader here.
RUNTIMES: dict[
    str, Callable[[Path, Mapping[str, Any], int | None], tuple[RunFn, dict[str, Any]]]
] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}


def load_runtime(
    bundle: Path, spec: Mapping[str, Any], threads: int | None = None
) -> tuple[RunFn, dict[str, Any]]:
    target = spec.get("target")
    loader = RUNTIMES.get(str(target))
    if loader is None:
        known = ", ".join(sorted(RUNTIMES))
        raise BundleError(f"this verify.py cannot run target {target!r} (knows: {known})")
    try:
        return loader(bundle, spec, threads)
    except BundleError:
        raise
    except Exception as exc:  # the runtime rejects the model: that is a failed check
        raise BundleError(
            f"{target} cannot load {spec.get('model_file')}: {type(exc).__name__}: {exc}",
            EXIT_FAILED,
        ) from exc


# --------------------------------------------------------------------------- golden


def golden_keys(index: int, name: str, kind: str) -> str:
    """Array names inside golden.npz: `input.0.input_ids`, `output.0.last_hidden_state`."""
    return f"{kind}.{index}.{name}"


def load_golden(
    bundle: Path, golden: Mapping[str, Any]
) -> list[tuple[dict[str, Array], dict[str, Array]]]:
    path = checked_path(bundle, golden.get("file", GOLDEN_FILE), "golden.file")
    try:
        count = len(golden["texts"])
        input_names = list(golden["input_names"])
        output_names = list(golden["output_names"])
        with np.load(path, allow_pickle=False) as data:
            return [
                (
                    {name: data[golden_keys(i, name, "input")] for name in input_names},
                    {name: data[golden_keys(i, name, "output")] for name in output_names},
                )
                for i in range(count)
            ]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path.name}: golden data unreadable or incomplete: {exc}") from exc


def pool(hidden: Array, mask: Array, mode: str, normalize: bool) -> Array:
    """Sentence embedding from token states (the same formula as edgeport's validation)."""
    hidden = np.asarray(hidden).astype(np.float64)
    weights = np.asarray(mask)[..., None].astype(np.float64)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(weights > 0, hidden, -np.inf).max(axis=1)
    else:
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
    return pooled


def cosine_rows(a: Array, b: Array) -> Array:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.clip(norms, 1e-12, None)


def valid_positions(feeds: Mapping[str, Array], array: Array) -> Array:
    """Values at real (non-padding) token positions, when the output is per token."""
    mask = feeds.get("attention_mask")
    if mask is not None and array.ndim >= 2 and array.shape[:2] == mask.shape:
        return array[np.asarray(mask).astype(bool)]
    return array


def task_metrics(
    spec: Mapping[str, Any],
    pairs: list[tuple[dict[str, Array], dict[str, Array]]],
    actual: list[Outputs],
) -> dict[str, float]:
    """The task metric(s) validation gates on, computed over the golden samples."""
    task = spec.get("task")
    if task == DECODER_TASK:
        agree = total = 0
        for (_, ref), out in zip(pairs, actual, strict=True):
            expected, got = np.asarray(ref[NEXT_TOKEN]), np.asarray(out[NEXT_TOKEN])
            agree += int((expected == got).sum())
            total += int(expected.size)
        return {"next_token_agreement": agree / max(total, 1)}
    name = spec["output_names"][0]
    if task == "feature-extraction":
        cosines = np.concatenate(
            [
                cosine_rows(
                    pool(
                        ref[name],
                        feeds["attention_mask"],
                        spec["pooling"],
                        spec["normalize_embeddings"],
                    ),
                    pool(
                        out[name],
                        feeds["attention_mask"],
                        spec["pooling"],
                        spec["normalize_embeddings"],
                    ),
                )
                for (feeds, ref), out in zip(pairs, actual, strict=True)
            ]
        )
        return {
            "embedding_cosine_min": float(cosines.min()),
            "embedding_cosine_mean": float(cosines.mean()),
        }
    agree = total = 0
    for (feeds, ref), out in zip(pairs, actual, strict=True):
        expected = valid_positions(feeds, np.asarray(ref[name])).argmax(axis=-1)
        got = valid_positions(feeds, np.asarray(out[name])).argmax(axis=-1)
        agree += int((expected == got).sum())
        total += int(expected.size)
    return {"top1_agreement": agree / max(total, 1)}


def check_golden(
    spec: Mapping[str, Any],
    golden: Mapping[str, Any],
    pairs: list[tuple[dict[str, Array], dict[str, Array]]],
    run: RunFn,
) -> dict[str, Any]:
    """Run the golden inputs; names, then shapes, then values, then the task metric."""
    failures: list[str] = []
    actual = [run(feeds) for feeds, _ in pairs]
    outputs = []
    for name in golden["output_names"]:
        if any(name not in out for out in actual):
            failures.append(f"output {name!r} is missing from the model")
            continue
        max_error = 0.0
        for (feeds, ref), out in zip(pairs, actual, strict=True):
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
                valid_positions(feeds, expected.astype(np.float64) - got.astype(np.float64))
            )
            max_error = max(max_error, float(diff.max(initial=0.0)))
        outputs.append({"name": name, "max_abs_error": max_error})
    metrics = []
    if not failures:
        values = task_metrics(spec, pairs, actual)
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


def measure_latency(run: RunFn, feeds: Mapping[str, Array], runs: int) -> dict[str, Any]:
    for _ in range(WARMUP_RUNS):
        run(feeds)
    timings = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run(feeds)
        timings.append((time.perf_counter() - start) * 1000)
    tokens = int(np.asarray(next(iter(feeds.values()))).shape[-1])
    return {
        "runs": len(timings),
        "tokens": tokens,
        "median_ms": round(float(np.median(timings)), 3),
        "p90_ms": round(float(np.percentile(timings, 90)), 3),
    }


# --------------------------------------------------------------------------- all together


def verify(bundle: Path, *, runs: int = DEFAULT_RUNS, threads: int | None = None) -> dict[str, Any]:
    """Every check, every failure collected; `exit_code` says how it ended."""
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "passed": False,
        "exit_code": EXIT_MALFORMED,
        "manifest": None,
        "files": None,
        "golden": None,
        "latency": None,
        "runtime": None,
        "failures": [],
    }
    try:
        manifest = load_manifest(bundle)
        spec = manifest["runtime"]
        result["model"] = (manifest.get("model") or {}).get("id")
        result["verdict"] = manifest.get("verdict")
        checked_manifest = check_manifest(manifest)
        result["manifest"] = checked_manifest
        result["failures"] += checked_manifest["failures"]
        files = check_files(bundle, manifest)
        result["files"] = files
        result["failures"] += files["failures"]
        golden = manifest.get("golden")
        if checked_manifest["failures"]:
            # The thresholds and runtime settings themselves are in doubt.
            result["golden"] = {"skipped": f"{MANIFEST} failed its digest check"}
        elif files["failures"]:
            result["golden"] = {"skipped": "the bundle's files do not match manifest.json"}
        elif not golden:
            result["golden"] = {"skipped": "this bundle carries no golden data"}
        else:
            pairs = load_golden(bundle, golden)
            run, info = load_runtime(bundle, spec, threads)
            result["runtime"] = info
            checked = check_golden(spec, golden, pairs, run)
            result["golden"] = checked
            result["failures"] += checked["failures"]
            if runs > 0 and pairs:
                longest = max(
                    pairs,
                    key=lambda pair: (
                        int(np.asarray(pair[0]["input_ids"]).size) if "input_ids" in pair[0] else 0
                    ),
                )
                result["latency"] = measure_latency(run, longest[0], runs)
    except BundleError as exc:
        result["failures"].append(str(exc))
        result["exit_code"] = exc.exit_code
        return result
    if result["failures"] and manifest.get("verdict") == "degraded":
        result["failures"].append("note: this bundle was shipped degraded (--accept-degraded)")
    result["passed"] = not result["failures"]
    result["exit_code"] = EXIT_OK if result["passed"] else EXIT_FAILED
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
            parts.append(f"latency {latency['median_ms']:.2f} ms ({latency['tokens']} tokens)")
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
