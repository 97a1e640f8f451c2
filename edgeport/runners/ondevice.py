"""The code every bundle runs on the device, once: numpy and the standard library only.

Shipped as `ondevice.py` beside run.py and verify.py in every bundle, imported by both,
and imported on the build host (as `edgeport.runners.ondevice`) by edgeport's validation,
golden data, reproducibility digests and `edgeport verify`: pooling, cosine, the task
metrics, sha256 and manifest checks, the runtime settings each target is validated with,
and loading a bundle's model. A formula written here is the one formula: the host's
validation and the device's verify.py cannot drift apart.

Runtimes (onnxruntime, openvino) and Pillow are imported inside the functions that need
them: a bundle needs only its own runtime.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL import Image

MANIFEST = "manifest.json"
GOLDEN_FILE = "golden.npz"
EXIT_OK = 0
EXIT_MALFORMED = 2
EXIT_FAILED = 3
EXIT_NO_RUNTIME = 4
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


def refuse(message: str, exit_code: int = EXIT_MALFORMED, program: str = "run.py") -> NoReturn:
    """A one-line refusal on stderr and the exit code, for the bundle's scripts."""
    import sys

    print(f"{program}: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def runner_manifest(bundle: Path) -> dict[str, Any]:
    """manifest.json for run.py, checked before any model loads (paths that leave the
    bundle are refused), or a one-line refusal with verify.py's exit code."""
    try:
        return load_manifest(bundle)
    except BundleError as exc:
        refuse(str(exc), exc.exit_code)


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


def onnxruntime_options(threads: int) -> Any:
    """ONNX Runtime's session options as edgeport validates and times a model: the default
    graph optimisations (what users of the runtime get), `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def onnxruntime_session(path: Path, threads: int, providers: Sequence[str] = ()) -> Any:
    """An ONNX Runtime session on the first of `providers` this install has, else the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BundleError(
            "onnxruntime is not installed: pip install -r requirements.txt", EXIT_NO_RUNTIME
        ) from exc
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), onnxruntime_options(threads), providers=chosen)


def openvino_config(device: str, threads: int) -> dict[str, Any]:
    """OpenVINO compile settings edgeport validates with. On a CPU: f32 (CPUs with AMX would
    otherwise pick bf16), one stream, and denormals flushed (~8% faster int8 encoders on
    x86, and validated with it). Accelerators run at their own (fp16) precision."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if device.split(".")[0] == "CPU":
        config.update(
            {
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
                "CPU_DENORMALS_OPTIMIZATION": True,
            }
        )
    return config


def openvino_device(core: Any, wanted: Sequence[str]) -> str:
    """The first of `wanted` (the manifest's devices, or the user's) that this machine has."""
    available = set(core.available_devices)
    for device in wanted:
        if device in available or str(device).split(".")[0] in available:
            return str(device)
    return "CPU"


def openvino_compiled(
    path: Path, threads: int, devices: Sequence[str] = ("CPU",)
) -> tuple[Any, str]:
    """(compiled model, device) for an IR file, with `openvino_config`."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise BundleError(
            "openvino is not installed: pip install -r requirements.txt", EXIT_NO_RUNTIME
        ) from exc
    core = ov.Core()
    device = openvino_device(core, devices)
    return core.compile_model(str(path), device, openvino_config(device, threads)), device


def spec_threads(spec: Mapping[str, Any], threads: int | None) -> int:
    return int(threads or spec.get("threads", 0) or 0)


def _onnxruntime(
    bundle: Path, spec: Mapping[str, Any], threads: int | None
) -> tuple[RunFn, dict[str, Any]]:
    import onnxruntime as ort  # onnxruntime_session has reported a missing install

    session = onnxruntime_session(
        bundle / spec["model_file"], spec_threads(spec, threads), spec.get("providers") or ()
    )
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
    devices = spec.get("providers") or [spec.get("device", "CPU")]
    compiled, device = openvino_compiled(
        bundle / spec["model_file"], spec_threads(spec, threads), devices
    )
    import openvino as ov

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


# Runner flavour (the target YAML's `runner`, written to manifest runtime.runner; older
# bundles only say runtime.target) -> loader(bundle, runtime spec, threads) -> (run, info).
# A new runtime adds one loader here: this file is the only code a bundle runs.
RUNTIMES: dict[
    str, Callable[[Path, Mapping[str, Any], int | None], tuple[RunFn, dict[str, Any]]]
] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}


def load_runtime(
    bundle: Path, spec: Mapping[str, Any], threads: int | None = None
) -> tuple[RunFn, dict[str, Any]]:
    target = spec.get("runner") or spec.get("target")
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
    """Cosine of each pair of rows; two all-zero rows are identical (1.0), one is not (0.0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cosine = (a * b).sum(axis=-1) / np.clip(norm_a * norm_b, 1e-12, None)
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, cosine)


def image_embedding(outputs: Mapping[str, Array], name: str) -> Array:
    """One vector per image from a vision backbone's output `name`: a pooled output as it
    is, the CLS token of a (batch, tokens, hidden) sequence (ViT, DINOv2), the spatial mean
    of a (batch, channels, height, width) feature map (convolutional backbones)."""
    array = np.asarray(outputs[name], dtype=np.float64)
    if array.ndim == 3:
        return array[:, 0]
    if array.ndim == 4:
        return array.mean(axis=(2, 3))
    return array.reshape(array.shape[0], -1)


def softmax(logits: Array) -> Array:
    values = np.asarray(logits, dtype=np.float64)
    values = np.exp(values - values.max(axis=-1, keepdims=True))
    return values / values.sum(axis=-1, keepdims=True)


def image_classification_metrics(
    reference: Sequence[Mapping[str, Array]], actual: Sequence[Mapping[str, Array]], name: str
) -> dict[str, float]:
    """Top-1 agreement with the original's labels, and the worst logit cosine (a model that
    keeps the label while its scores drift is caught before the label flips)."""
    expected = np.concatenate([np.asarray(r[name]).argmax(axis=-1) for r in reference])
    got = np.concatenate([np.asarray(a[name]).argmax(axis=-1) for a in actual])
    cosines = np.concatenate(
        [cosine_rows(r[name], a[name]) for r, a in zip(reference, actual, strict=True)]
    )
    return {
        "top1_agreement": float((expected == got).mean()) if expected.size else 0.0,
        "logit_cosine_min": float(cosines.min()) if cosines.size else 0.0,
    }


def image_embedding_metrics(
    reference: Sequence[Mapping[str, Array]], actual: Sequence[Mapping[str, Array]], name: str
) -> dict[str, float]:
    """Worst and mean cosine of the image embeddings (`image_embedding` of output `name`)."""
    cosines = np.concatenate(
        [
            cosine_rows(image_embedding(r, name), image_embedding(a, name))
            for r, a in zip(reference, actual, strict=True)
        ]
    )
    return {
        "embedding_cosine_min": float(cosines.min()) if cosines.size else 0.0,
        "embedding_cosine_mean": float(cosines.mean()) if cosines.size else 0.0,
    }


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
    if task == "image-classification":
        return image_classification_metrics(
            [ref for _, ref in pairs], actual, spec["output_names"][0]
        )
    if task == "image-feature-extraction":
        return image_embedding_metrics(
            [ref for _, ref in pairs], actual, spec.get("embedding_output") or ""
        )
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


# --------------------------------------------------------------------------- images
#
# Image preprocessing for vision models: what a model's preprocessor_config.json asks for.
#
# This file is shipped inside bundles and is the single definition of image preprocessing:
# the host uses it to make validation inputs and the device uses it to feed the model, so
# both see the same pixels. It therefore imports only the standard library, numpy and
# Pillow, and nothing from edgeport (a bundle imports it by its bare file name).
#
# It reproduces transformers' (4.57) *slow* image processors bit for bit, because it makes
# the same calls in the same order: PIL's `Image.resize` with the configured filter and
# transformers' int()-truncated target size, center crop with transformers' offsets and
# zero padding, rescale in float64 then cast to float32, normalisation in float32, and a
# channels-first float32 result. `pixel_values` always converts images to RGB first: the
# processors without `do_convert_rgb` cannot handle grey or RGBA images at all, and for RGB
# images the conversion changes nothing.
#
# `unsupported_reason` refuses, rather than approximates, every config this file does not
# reproduce exactly, including options on which the slow and fast (`...Fast`) variants of
# one processor disagree, since either may have produced the model's reference outputs.

Size = tuple[int, int]  # (height, width), the order transformers uses
# A configured resize, applied to one image's (height, width): the size to resize to, and
# the square that ConvNeXt's resize step crops to afterwards (None for everyone else).
Geometry = Callable[[Size], tuple[Size, Size | None]]

# PILImageResampling's values, which are Pillow's: configs store the filter as this int.
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = range(6)
_IMAGENET_DEFAULT = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
_IMAGENET_STANDARD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
_OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


class _Unsupported(Exception):
    """A config this module would not reproduce exactly; the message is the one-line reason."""


def _size_dict(value: Any, int_is_square: bool, name: str) -> dict[str, int]:
    """transformers' get_size_dict: older configs write a size as an int or a (height, width)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if int_is_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, Mapping) and set(value) in ({"height", "width"}, {"shortest_edge"}):
        return {key: int(edge) for key, edge in value.items()}
    if isinstance(value, Mapping) and set(value) & {"longest_edge", "max_height", "max_width"}:
        # The slow processors read only `shortest_edge`; the fast ones also cap the long edge.
        raise _Unsupported(
            f"{name} {dict(value)} caps the long edge, which slow and fast disagree on"
        )
    raise _Unsupported(f"{name} {value!r} is not a size transformers understands")


def _height_width(size: Mapping[str, int], name: str = "size") -> Size:
    if "height" not in size:
        raise _Unsupported(f"{name} {dict(size)} must give height and width for this processor")
    return size["height"], size["width"]


def _shortest_edge(size: Mapping[str, int]) -> int:
    if "shortest_edge" not in size:
        raise _Unsupported(f"size {dict(size)} must give shortest_edge for this processor")
    return size["shortest_edge"]


def _short_side_to(image: Size, edge: int) -> Size:
    """get_resize_output_image_size(default_to_square=False): the short side becomes `edge`
    and the long side keeps the aspect ratio, truncated by int() in transformers' exact
    float expression (a rounded size would shift every pixel of a following crop)."""
    height, width = image
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def _fixed(s: Mapping[str, Any]) -> Geometry:
    """ViT, DeiT, BEiT, EfficientNet, SigLIP: warp to size's height × width."""
    size = _height_width(s["size"])
    return lambda image: (size, None)


def _shortest_or_fixed(s: Mapping[str, Any]) -> Geometry:
    """MobileNet, CLIP, BiT, MobileViT: short side to shortest_edge, or warp to height × width."""
    size = s["size"]
    if s.get("use_square_size"):  # CLIP's legacy flag: warp to shortest_edge²
        edge = _shortest_edge(size)
        return lambda image: ((edge, edge), None)
    if "shortest_edge" in size:
        return lambda image: (_short_side_to(image, size["shortest_edge"]), None)
    return _fixed(s)


def _convnext(s: Mapping[str, Any]) -> Geometry:
    """ConvNeXt (and ResNet, RegNet…): below 384, short side to edge/crop_pct then crop edge²;
    from 384 on, warp to edge² with no crop."""
    edge = _shortest_edge(s["size"])
    if edge >= 384:
        return lambda image: ((edge, edge), None)
    crop_pct = s["crop_pct"] if s["crop_pct"] is not None else 224 / 256
    return lambda image: (_short_side_to(image, int(edge / crop_pct)), (edge, edge))


def _levit(s: Mapping[str, Any]) -> Geometry:
    """LeViT: short side to int(256/224 · shortest_edge), or warp to height × width."""
    size = s["size"]
    if "shortest_edge" in size:
        scaled = int(256 / 224 * size["shortest_edge"])
        return lambda image: (_short_side_to(image, scaled), None)
    return _fixed(s)


def _poolformer(s: Mapping[str, Any]) -> Geometry:
    """PoolFormer: like the shortest-edge rule, with every edge first divided by crop_pct
    (None skips that); a non-square height × width is warped to the divided size."""
    size, crop_pct = s["size"], s["crop_pct"]
    scale: Callable[[int], int] = (
        (lambda e: e) if crop_pct is None else (lambda e: int(e / crop_pct))
    )
    if "shortest_edge" in size:
        return lambda image: (_short_side_to(image, scale(size["shortest_edge"])), None)
    height, width = _height_width(size)
    if crop_pct is not None and height == width:
        return lambda image: (_short_side_to(image, scale(height)), None)
    return lambda image: ((scale(height), scale(width)), None)


class _Processor(NamedTuple):
    """One transformers image processor, as far as pixel_values go.

    A NamedTuple rather than a dataclass: a dataclass needs its module in sys.modules,
    which a host that loads a bundle's copy of this file by path need not arrange."""

    geometry: Callable[[Mapping[str, Any]], Geometry]
    # Exactly the settings the slow processor reads, with its __init__ defaults; a config
    # key outside them is ignored, as the slow processor ignores it. The presence of
    # do_center_crop, do_normalize, do_flip_channel_order, rescale_offset or include_top
    # says the processor has that step.
    defaults: Mapping[str, Any]
    int_size_is_square: bool  # how get_size_dict reads a bare-int `size` for this processor


def _processor(
    geometry: Callable[[Mapping[str, Any]], Geometry],
    size: int | dict[str, int],
    resample: int,
    norm: tuple[list[float], list[float]] | None = _IMAGENET_STANDARD,
    crop: int | None = None,
    **extra: Any,
) -> _Processor:
    """A table entry. An int default `size` is a square and marks a processor whose
    get_size_dict also reads a config's bare-int size as a square; with a dict default, a
    bare int means shortest_edge."""
    square = not isinstance(size, dict)
    defaults: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": size, "width": size} if square else size,
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
    }
    if norm is not None:
        defaults |= {"do_normalize": True, "image_mean": norm[0], "image_std": norm[1]}
    if crop is not None:
        defaults |= {"do_center_crop": True, "crop_size": {"height": crop, "width": crop}}
    return _Processor(geometry, defaults | extra, int_size_is_square=square)


_SHORT_256 = {"shortest_edge": 256}
_SHORT_224 = {"shortest_edge": 224}
# The one table of what each processor does. Sources: transformers/models/<model>/
# image_processing_<model>.py (slow classes); ResNet, RegNet, CvT, ConvNeXt V2 and others
# use ConvNext's, Swin and many ViT variants ViT's, DINOv2 BiT's.
_PROCESSORS: dict[str, _Processor] = {
    "ViTImageProcessor": _processor(_fixed, 224, BILINEAR),
    "DeiTImageProcessor": _processor(_fixed, 256, BICUBIC, crop=224),
    "BeitImageProcessor": _processor(_fixed, 256, BICUBIC, crop=224),
    # SigLIP reads a bare-int size as shortest_edge and then fails on it: a dict default.
    "SiglipImageProcessor": _processor(_fixed, {"height": 224, "width": 224}, BICUBIC),
    "EfficientNetImageProcessor": _processor(
        _fixed, 346, NEAREST, crop=289, do_center_crop=False, rescale_offset=False, include_top=True
    ),
    "ConvNextImageProcessor": _processor(
        _convnext, {"shortest_edge": 384}, BILINEAR, crop_pct=224 / 256
    ),
    "MobileNetV1ImageProcessor": _processor(_shortest_or_fixed, _SHORT_256, BILINEAR, crop=224),
    "MobileNetV2ImageProcessor": _processor(_shortest_or_fixed, _SHORT_256, BILINEAR, crop=224),
    "CLIPImageProcessor": _processor(
        _shortest_or_fixed, _SHORT_224, BICUBIC, _OPENAI_CLIP, crop=224, use_square_size=False
    ),
    "BitImageProcessor": _processor(
        _shortest_or_fixed, _SHORT_224, BICUBIC, _OPENAI_CLIP, crop=224
    ),
    "MobileViTImageProcessor": _processor(
        _shortest_or_fixed, _SHORT_224, BILINEAR, None, crop=256, do_flip_channel_order=True
    ),
    "LevitImageProcessor": _processor(_levit, _SHORT_224, BICUBIC, _IMAGENET_DEFAULT, crop=224),
    "PoolFormerImageProcessor": _processor(
        _poolformer, _SHORT_224, BICUBIC, _IMAGENET_DEFAULT, crop=224, crop_pct=0.9
    ),
}
# transformers replaces these by the class default when a config says null; any other
# null stays null (a null do_resize skips the resize, a null crop_pct skips PoolFormer's).
_NULL_MEANS_DEFAULT = frozenset({"size", "crop_size", "image_mean", "image_std"})


def _processor_name(config: Mapping[str, Any]) -> str:
    """The slow processor AutoImageProcessor picks from this config alone."""
    if {"AutoImageProcessor", "AutoFeatureExtractor"} & set(config.get("auto_map") or {}):
        raise _Unsupported("the config names custom (remote-code) image processing")
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not isinstance(name, str):
        raise _Unsupported("the config names no image_processor_type or feature_extractor_type")
    # Old configs name the feature extractor, a thin subclass of the image processor; a
    # `Fast` name is the same processor, read the way the slow one reads it.
    name = name.replace("FeatureExtractor", "ImageProcessor").removesuffix("Fast")
    if name not in _PROCESSORS:
        raise _Unsupported(f"{name} is not an image processor this module reproduces")
    return name


def _channel_values(value: Any, name: str) -> list[float]:
    """A per-channel mean or std: normalize() repeats a single number for all 3 channels."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return [float(value)] * 3
    if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, Real) for v in value):
        return [float(v) for v in value]
    raise _Unsupported(f"{name} {value!r} is not one number or three")


def _resolve(config: Mapping[str, Any]) -> tuple[dict[str, Any], Geometry | None]:
    """The settings a processor would run with, and its resize; _Unsupported if not exact."""
    name = _processor_name(config)
    processor = _PROCESSORS[name]
    if config.get("do_pad"):  # the fast processors pad; no slow one listed here does
        raise _Unsupported("do_pad is set, which this module does not implement")
    if config.get("do_center_crop") and "do_center_crop" not in processor.defaults:
        # The slow processor has no crop step and ignores it; the fast one crops.
        raise _Unsupported(
            f"do_center_crop is set, which {name} (slow) ignores but its fast variant applies"
        )
    s: dict[str, Any] = {}
    for key, default in processor.defaults.items():
        value = config.get(key, default)
        s[key] = default if value is None and key in _NULL_MEANS_DEFAULT else value
    s["size"] = _size_dict(s["size"], processor.int_size_is_square, "size")
    geometry = None
    if s["do_resize"]:
        geometry = processor.geometry(s)
        if not isinstance(s["resample"], int) or s["resample"] not in range(6):
            raise _Unsupported(f"resample {s['resample']!r} is not a PIL filter (0-5)")
    if s.get("do_center_crop"):
        s["crop_size"] = _height_width(_size_dict(s["crop_size"], True, "crop_size"), "crop_size")
    if s["do_rescale"] and not (
        isinstance(s["rescale_factor"], Real) and not isinstance(s["rescale_factor"], bool)
    ):
        raise _Unsupported(f"rescale_factor {s['rescale_factor']!r} is not a number")
    if s.get("do_normalize") or s.get("include_top"):
        s["image_std"] = _channel_values(s["image_std"], "image_std")
    if s.get("do_normalize"):
        s["image_mean"] = _channel_values(s["image_mean"], "image_mean")
    return s, geometry


def image_unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """None when `pixel_values` reproduces this preprocessor_config.json exactly, else why not."""
    try:
        _resolve(config)
    except _Unsupported as exc:
        return str(exc)
    return None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as transformers' load_image does: upright per EXIF, then RGB."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _center_crop(image: Image.Image, size: Size) -> Image.Image:
    """transformers' center_crop: offset floor((side - crop) / 2); where the crop is larger
    than the image the box reaches outside it, and PIL fills that with zeros exactly where
    transformers pads with zeros (ceil((crop - side) / 2) before the image)."""
    height, width = size
    top, left = (image.height - height) // 2, (image.width - width) // 2
    return image.crop((left, top, left + width, top + height))


def _normalize(
    x: npt.NDArray[Any], mean: Sequence[float], std: Sequence[float]
) -> npt.NDArray[Any]:
    """transformers' normalize: an unrescaled uint8 image is cast to float32 first, and mean
    and std are cast to the image's float32, so all arithmetic is float32."""
    x = x.astype(np.float32, copy=False)
    result: npt.NDArray[Any] = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    return result


def _one(
    image: Image.Image, s: Mapping[str, Any], geometry: Geometry | None
) -> npt.NDArray[np.float32]:
    image = image if image.mode == "RGB" else image.convert("RGB")
    if geometry is not None:
        size, square = geometry((image.height, image.width))
        image = image.resize((size[1], size[0]), resample=s["resample"])
        if square is not None:
            image = _center_crop(image, square)
    # Cropping before rescaling is what every processor here does except MobileViT, which
    # rescales first; it has no rescale offset, so its zero padding stays zero either way.
    if s.get("do_center_crop"):
        image = _center_crop(image, s["crop_size"])
    x: npt.NDArray[Any] = np.asarray(image)  # (height, width, 3) uint8
    if s["do_rescale"]:
        # rescale(): multiply in float64, then cast, exactly as transformers does.
        x = (x.astype(np.float64) * s["rescale_factor"]).astype(np.float32)
        if s.get("rescale_offset"):  # EfficientNet: [0, 2] → [-1, 1]
            x = x - 1
    if s.get("do_normalize"):
        x = _normalize(x, s["image_mean"], s["image_std"])
    if s.get("include_top"):  # EfficientNet divides by std a second time (mean 0)
        x = _normalize(x, [0.0] * 3, s["image_std"])
    if s.get("do_flip_channel_order"):  # MobileViT's checkpoints expect BGR
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def pixel_values(
    images: Sequence[Image.Image], config: Mapping[str, Any]
) -> npt.NDArray[np.float32]:
    """The model's pixel_values for `images`: float32, (N, 3, height, width).

    `config` is the parsed preprocessor_config.json. Raises ValueError for a config that
    `image_unsupported_reason` refuses, and when the images end up with different sizes (a
    config without a crop or a fixed size keeps each image's aspect ratio).
    """
    try:
        settings, geometry = _resolve(config)
    except _Unsupported as exc:
        raise ValueError(f"unsupported image preprocessing: {exc}") from None
    if not images:
        raise ValueError("pixel_values needs at least one image")
    arrays = [_one(image, settings, geometry) for image in images]
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images preprocess to different sizes {sorted(shapes)}; batch them one by one"
        )
    return np.stack(arrays)
