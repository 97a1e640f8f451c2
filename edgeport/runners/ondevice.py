"""The code every bundle runs on the device, once: numpy and the standard library only.

Shipped as `ondevice.py` beside run.py and verify.py in every bundle, imported by both,
and imported on the build host (as `edgeport.runners.ondevice`) by edgeport's validation,
golden data, reproducibility digests and `edgeport verify`: pooling, cosine, the task
metrics, sha256 and manifest checks, the runtime settings each target is validated with,
and loading a bundle's model. A formula written here is the one formula: the host's
validation and the device's verify.py cannot drift apart.

Runtimes (onnxruntime, openvino, llama_cpp) and Pillow are imported inside the functions that need
them: a bundle needs only its own runtime.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
# The search's record (`attempts`) is volatile as a whole: which candidates were timed,
# confirmed or skipped, and the ratios their reasons quote, follow this host's timings,
# while what ships (recipe, files, accuracy) does not.
VOLATILE_FIELDS = (
    "attempts",
    "metrics.latency_ratio_vs_fp32",
    "metrics.tokens_per_s",
    "metrics.time_to_first_token_ms",
)
# Manifests of format 1 (edgeport before the search record became volatile) are hashed
# with the list they were written with, so bundles made then still verify.
VOLATILE_FIELDS_FORMAT_1 = (
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
    for part in parts(runtime):
        checked_path(bundle, part.get("model_file"), "runtime.parts[].model_file")
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
    # format_version is itself hashed: changing it to pick the narrower list fails the check.
    volatile = VOLATILE_FIELDS_FORMAT_1 if manifest.get("format_version") == 1 else VOLATILE_FIELDS
    for field in volatile:
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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def spec_threads(spec: Mapping[str, Any], threads: int | None) -> int:
    """`threads` when the user gave them, else the manifest's (the profile's cores), capped
    at the CPUs this machine has: a 4-core profile's bundle on a 2-core board would
    otherwise run 4 spinning threads on 2 cores, 2-3x slower (ONNX Runtime, llama.cpp)."""
    if threads:
        return int(threads)
    wanted = int(spec.get("threads", 0) or 0)
    return min(wanted, available_cpus()) if wanted else 0


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
        (i.name, i.shape[1], i.shape[3], onnx_dtype(i.type))
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
    if is_seq2seq_decoder(input_names):
        return onnxruntime_seq2seq_decoder(session), info
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
    if is_seq2seq_decoder(input_names):
        return openvino_seq2seq_decoder(compiled), info
    return (run_decoder if "beam_idx" in input_names else run), info


LLAMA_CPP_CONTEXT = 512  # tokens: a validation window (128) or a prompt and its continuation


def llama_cpp_model(
    path: Path, threads: int, n_ctx: int = LLAMA_CPP_CONTEXT, *, all_logits: bool = True
) -> Any:
    """A `llama_cpp.Llama` on a GGUF file as edgeport validates it: CPU, `threads` threads
    (0: llama.cpp's choice), the log silenced; `all_logits` keeps the logits of every
    position in `.scores` (to score a whole window), else read the last with
    `llama_cpp_last_logits`."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BundleError(
            "llama-cpp-python is not installed: pip install -r requirements.txt", EXIT_NO_RUNTIME
        ) from exc
    kwargs: dict[str, Any] = {"n_threads": threads, "n_threads_batch": threads} if threads else {}
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, LLAMA_CPP_CONTEXT),
        n_ubatch=min(n_ctx, LLAMA_CPP_CONTEXT),
        logits_all=all_logits,
        n_gpu_layers=0,
        verbose=False,
        **kwargs,
    )


def llama_cpp_last_logits(model: Any) -> Array:
    """The logits after the last token `model.eval` saw (a view into llama.cpp's buffer)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(int(model.n_vocab()),))


def _llama_cpp(
    bundle: Path, spec: Mapping[str, Any], threads: int | None
) -> tuple[RunFn, dict[str, Any]]:
    """A GGUF language model through llama-cpp-python: each window is scored from an empty
    KV cache with the token ids given (no BOS added) and its next tokens returned."""
    import llama_cpp  # llama_cpp_model has reported a missing install

    path = bundle / spec["model_file"]
    model = llama_cpp_model(path, spec_threads(spec, threads))

    def run_decoder(feeds: Mapping[str, Array]) -> Outputs:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        mask = feeds.get("attention_mask")
        rows = []
        for row, values in enumerate(ids):
            length = int(np.asarray(mask)[row].sum()) if mask is not None else len(values)
            if length > model.n_ctx():
                raise BundleError(f"a golden window of {length} tokens exceeds the context")
            model.reset()  # eval clears the KV cache from n_tokens (0) on
            model.eval([int(t) for t in values[:length]])
            tokens = np.zeros(len(values), dtype=np.int64)
            tokens[:length] = np.asarray(model.scores[:length]).argmax(axis=-1)
            rows.append(tokens)
        return {NEXT_TOKEN: np.stack(rows)}

    version = str(getattr(llama_cpp, "__version__", "unknown"))
    return run_decoder, {"target": "llama.cpp", "version": version, "providers": ["CPU"]}


def greedy_tokens(tokens: Iterator[int], max_new_tokens: int, stop: Iterable[int]) -> Iterator[int]:
    """The first `max_new_tokens` of an endless greedy stream, ending after a stop token."""
    stop = frozenset(stop)
    for count, token in enumerate(tokens, 1):
        yield token
        if token in stop or count >= max_new_tokens:
            return


def onnxruntime_greedy_tokens(session: Any, prompt: Sequence[int]) -> Iterator[int]:
    """Greedy decoding of optimum's KV-cache decoder graph (text-generation-with-past) on an
    ONNX Runtime session, endless (the caller stops it): the cache stays in ONNX Runtime's
    own buffers (IO binding: each step's present.* values are bound as the next step's
    past_key_values.* as they are, never copied through numpy), and only the last row of
    logits is read. run.py, `edgeport`'s validation and its timings all decode here."""
    import onnxruntime as ort

    inputs = session.get_inputs()
    input_names = {i.name for i in inputs}
    output_names = [o.name for o in session.get_outputs()]
    binding = session.io_binding()
    past = {
        i.name: ort.OrtValue.ortvalue_from_numpy(
            np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=onnx_dtype(i.type))
        )
        for i in inputs
        if i.name.startswith(PAST_PREFIX)
    }
    presents = {name: "present." + name[len(PAST_PREFIX) :] for name in past}
    ids = np.array([list(prompt)], dtype=np.int64)
    length = 0
    while True:
        total = length + ids.shape[1]
        feeds = {"input_ids": ids}
        if "attention_mask" in input_names:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in input_names:
            feeds["position_ids"] = np.arange(length, total, dtype=np.int64)[None]
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        for name in output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        results = dict(zip(output_names, binding.get_outputs(), strict=True))
        past = {name: results[present] for name, present in presents.items()}
        length = total
        token = int(results[LOGITS].numpy()[0, -1].argmax())
        yield token
        ids = np.array([[token]], dtype=np.int64)


def onnx_dtype(onnx_type: str) -> Any:
    """numpy dtype of an ONNX Runtime input type string (fp16 caches, else fp32)."""
    return np.float16 if "float16" in onnx_type else np.float32


# A language model's inputs when it reads one new token of one sequence.
ONE_TOKEN_SHAPES = {
    "input_ids": [1, 1],
    "attention_mask": [1, -1],
    "position_ids": [1, 1],
    "beam_idx": [1],
}


class OpenVinoLanguageModel:
    """Greedy decoding of optimum-intel's stateful language model (the KV cache is the infer
    request's state; inputs input_ids, attention_mask, position_ids, beam_idx).

    The prompt runs through the graph as exported (any length, any batch). Every generated
    token then runs through a second compile of the same graph reshaped to one token of one
    sequence, after the prompt's KV cache is copied into it once. Why: with dynamic shapes
    OpenVINO's CPU plugin re-infers shapes, resizes buffers and re-prepares kernels node by
    node on every call, ~2 ms of a 7 ms step on a SmolLM2-135M-shaped model; the one-token
    graph is static but for its cache length, and decodes 1.2-1.4x faster. The cost is a
    second compiled copy of the weights (about the size of the .bin). A graph that cannot
    be reshaped so decodes on the first one.

    `model` is an IR path or an `ov.Model`; run.py and edgeport's validation and timings
    all decode here."""

    def __init__(self, model: Any, device: str, config: Mapping[str, Any]) -> None:
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
        self.input_names = [port.get_any_name() for port in graph.inputs]
        self._one_token: Any | None = None
        # Both compiled at once (compiling releases the GIL): loading takes about as long
        # as one compile. The clone shares the weights' memory with `graph`.
        compiling = threading.Thread(
            target=self._compile_one_token, args=(core, graph.clone(), device, dict(config))
        )
        compiling.start()
        try:
            self.compiled = core.compile_model(graph, device, dict(config))
        finally:
            compiling.join()
        self.request = self.compiled.create_infer_request()

    def _compile_one_token(
        self, core: Any, graph: Any, device: str, config: dict[str, Any]
    ) -> None:
        try:
            graph.reshape({n: s for n, s in ONE_TOKEN_SHAPES.items() if n in self.input_names})
            self._one_token = core.compile_model(graph, device, config).create_infer_request()
        except Exception:  # shapes the graph fixes otherwise, a plugin that refuses them:
            # any failure here decodes on the prompt's graph, which is still correct
            self._one_token = None

    def warm_up(self) -> None:
        """One token through each graph, so that the first prompt does not pay for the
        plugin's first-inference set-up (~0.3 s on a SmolLM2-135M-shaped model, 2 cores):
        loading takes that long instead. The next `tokens` resets the cache."""
        tokens = self.tokens([0])
        next(tokens)
        next(tokens)

    def one_token_request(self) -> Any:
        """The request generated tokens run on: the one-token graph, or the prompt's."""
        return self.request if self._one_token is None else self._one_token

    def feeds(self, ids: Array, length: int) -> dict[str, Array]:
        """Inputs for `ids` (one sequence) after `length` tokens already in the cache."""
        total = length + ids.shape[1]
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(length, total, dtype=np.int64)[None]
        if "beam_idx" in self.input_names:
            feeds["beam_idx"] = np.zeros(1, dtype=np.int32)
        return feeds

    def tokens(self, prompt: Sequence[int]) -> Iterator[int]:
        """Greedy tokens after `prompt`, endless (the caller stops): inputs are read and the
        last row of logits left in place, no per-step copy of either."""
        request = self.request
        request.reset_state()
        ids = np.array([list(prompt)], dtype=np.int64)
        length = 0
        while True:
            request.infer(self.feeds(ids, length), share_inputs=True, share_outputs=True)
            length += ids.shape[1]
            token = int(request.get_tensor(LOGITS).data[0, -1].argmax())
            yield token
            if request is self.request and self.one_token_request() is not self.request:
                request = self.one_token_request()
                request.reset_state()
                states = {state.name: state for state in request.query_state()}
                for state in self.request.query_state():
                    states[state.name].state = state.state
            ids = np.array([[token]], dtype=np.int64)


def stream_generation(
    tokens: Iterable[int],
    decode: Callable[[list[int]], str],
    prompt_tokens: int,
    *,
    as_json: bool,
    device: str = "",
) -> dict[str, Any]:
    """What every language model's run.py prints: the continuation streamed on stdout as
    `tokens` come (text held back while it ends in half a character), then time to first
    token and tokens per second on stderr; with `as_json`, one JSON object on stdout
    instead. Returns that object."""
    start = time.perf_counter()
    first_token_s: float | None = None
    generated: list[int] = []
    shown = ""
    for token in tokens:
        if first_token_s is None:
            first_token_s = time.perf_counter() - start
        generated.append(token)
        if not as_json:
            text = decode(generated)
            if text.startswith(shown) and not text.endswith("\ufffd"):
                sys.stdout.write(text[len(shown) :])
                sys.stdout.flush()
                shown = text
    decode_s = time.perf_counter() - start - (first_token_s or 0.0)
    text = decode(generated)
    result: dict[str, Any] = {
        "text": text,
        "tokens": generated,
        **({"device": device} if device else {}),
        "prompt_tokens": prompt_tokens,
        "new_tokens": len(generated),
        "time_to_first_token_ms": round((first_token_s or 0.0) * 1000, 2),
        "tokens_per_s": round((len(generated) - 1) / decode_s, 2) if len(generated) > 1 else None,
    }
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write((text[len(shown) :] if text.startswith(shown) else "") + "\n")
        on = f" on {device}" if device else ""
        print(
            f"[{len(generated)} tokens{on}; time to first token "
            f"{result['time_to_first_token_ms']:.1f} ms; {result['tokens_per_s']} tokens/s]",
            file=sys.stderr,
        )
    return result


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
    "llama.cpp": _llama_cpp,
}


def parts(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The graphs of a bundle: runtime.parts, or the one graph the top-level fields name."""
    listed = spec.get("parts") or []
    if not isinstance(listed, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in listed
    ):
        raise BundleError(f"{MANIFEST}: runtime.parts must list objects with a 'name'")
    if listed:
        return [dict(p) for p in listed]
    return [
        {
            "name": "",
            "model_file": spec.get("model_file"),
            "input_names": spec.get("input_names") or [],
            "output_names": spec.get("output_names") or [],
        }
    ]


def load_parts(
    bundle: Path, spec: Mapping[str, Any], threads: int | None = None
) -> tuple[dict[str, RunFn], dict[str, Any]]:
    """Every graph of the bundle loaded: {part name: run}, and the runtime's info."""
    runs: dict[str, RunFn] = {}
    info: dict[str, Any] = {}
    for part in parts(spec):
        runs[part["name"]], info = _load_one(bundle, {**spec, **part}, threads)
    return runs, info


def part_of(spec: Mapping[str, Any], feeds: Mapping[str, Any]) -> str:
    """The part whose inputs `feeds` carries (pixels: the image tower; ids: the text one)."""
    for part in parts(spec):
        if set(part["input_names"]) <= feeds.keys():
            return str(part["name"])
    raise BundleError(f"no part of this model takes inputs {sorted(feeds)}")


def load_runtime(
    bundle: Path, spec: Mapping[str, Any], threads: int | None = None
) -> tuple[RunFn, dict[str, Any]]:
    """One run function for the whole model: a multi-part model's sends each batch to
    the part whose inputs it carries."""
    if len(parts(spec)) == 1:
        return _load_one(bundle, spec, threads)
    runs, info = load_parts(bundle, spec, threads)
    if spec.get("task") in SEQ2SEQ_TASKS:
        return seq2seq_runtime(runs, spec), info

    def run(feeds: Mapping[str, Array]) -> Outputs:
        return runs[part_of(spec, feeds)](feeds)

    return run, info


def _load_one(
    bundle: Path, spec: Mapping[str, Any], threads: int | None
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
    bundle: Path, golden: Mapping[str, Any], spec: Mapping[str, Any] | None = None
) -> list[tuple[dict[str, Array], dict[str, Array]]]:
    """(inputs, reference outputs) of each golden sample; a multi-part model's samples
    each carry the names of the part they run through (golden.sample_parts)."""
    path = checked_path(bundle, golden.get("file", GOLDEN_FILE), "golden.file")
    try:
        count = len(golden["texts"])
        names = [(list(golden["input_names"]), list(golden["output_names"]))] * count
        sample_parts = golden.get("sample_parts") or []
        if sample_parts:
            by_name = {p["name"]: p for p in parts(spec or {})}
            names = [
                (list(by_name[p]["input_names"]), list(by_name[p]["output_names"]))
                for p in sample_parts
            ]
            if len(names) != count:
                raise ValueError(f"{len(names)} sample_parts for {count} samples")
        with np.load(path, allow_pickle=False) as data:
            return [
                (
                    {name: data[golden_keys(i, name, "input")] for name in inputs},
                    {name: data[golden_keys(i, name, "output")] for name in outputs},
                )
                for i, (inputs, outputs) in enumerate(names)
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


# Zero-shot image classification (CLIP, SigLIP): an image tower and a text tower, whose
# embeddings are compared as the original model compares them.
ZERO_SHOT_TASK = "zero-shot-image-classification"
IMAGE_EMBEDS = "image_embeds"
TEXT_EMBEDS = "text_embeds"


def unit_rows(a: Array) -> Array:
    a = np.asarray(a, dtype=np.float64)
    return a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)


def zero_shot_scores(image_embeds: Array, text_embeds: Array, spec: Mapping[str, Any]) -> Array:
    """Each image's (row) score for each label prompt (column), as the original model
    computes `logits_per_image`: the cosine times exp(logit_scale), plus SigLIP's bias;
    then a softmax over the labels (CLIP) or a sigmoid per label (SigLIP, whose scores
    do not sum to one)."""
    logits = float(spec.get("logit_scale") or 1.0) * (
        unit_rows(image_embeds) @ unit_rows(text_embeds).T
    )
    logits = logits + float(spec.get("logit_bias") or 0.0)
    if spec.get("scores") == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
    return softmax(logits)


def encode_prompts(
    tokenizer_file: Path, prompts: Sequence[str], spec: Mapping[str, Any]
) -> dict[str, Array]:
    """Label prompts as the text tower's inputs, with the `tokenizers` library alone:
    truncated to max_length and padded to the longest prompt (CLIP) or to max_length
    (SigLIP), with the model's pad token; the host's validation uses this same code."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    max_length = int(spec.get("max_length") or 0)
    if max_length:
        tokenizer.enable_truncation(max_length)
    length = max_length if spec.get("padding") == "max_length" and max_length else None
    tokenizer.enable_padding(pad_id=int(spec.get("pad_token_id") or 0), length=length)
    encodings = tokenizer.encode_batch(list(prompts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def zero_shot_metrics(
    reference: Sequence[Mapping[str, Array]],
    actual: Sequence[Mapping[str, Array]],
    spec: Mapping[str, Any],
) -> dict[str, float]:
    """The worst image and prompt embedding cosines, and how often the converted towers
    pick the original's label: every image against the largest set of prompts, each
    model scoring with its own embeddings."""

    def rows(outputs: Sequence[Mapping[str, Array]], name: str) -> list[Array]:
        return [np.asarray(o[name]) for o in outputs if name in o]

    metrics: dict[str, float] = {}
    for name, metric in ((IMAGE_EMBEDS, "image"), (TEXT_EMBEDS, "text")):
        pairs = [(r[name], a[name]) for r, a in zip(reference, actual, strict=True) if name in r]
        cosines = np.concatenate([cosine_rows(r, a) for r, a in pairs]) if pairs else np.zeros(0)
        metrics[f"{metric}_embedding_cosine_min"] = float(cosines.min()) if cosines.size else 0.0
    texts_ref, texts_got = rows(reference, TEXT_EMBEDS), rows(actual, TEXT_EMBEDS)
    images_ref, images_got = rows(reference, IMAGE_EMBEDS), rows(actual, IMAGE_EMBEDS)
    if not (texts_ref and images_ref):
        metrics["zero_shot_top1_agreement"] = 0.0
        return metrics
    widest = max(range(len(texts_ref)), key=lambda i: texts_ref[i].shape[0])
    expected = zero_shot_scores(np.concatenate(images_ref), texts_ref[widest], spec)
    got = zero_shot_scores(np.concatenate(images_got), texts_got[widest], spec)
    metrics["zero_shot_top1_agreement"] = float(
        (expected.argmax(axis=-1) == got.argmax(axis=-1)).mean()
    )
    return metrics


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
    if task == ZERO_SHOT_TASK:
        return zero_shot_metrics([ref for _, ref in pairs], actual, spec)
    if task in SEQ2SEQ_TASKS:
        return token_metrics([ref[TOKENS] for _, ref in pairs], [out[TOKENS] for out in actual])
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


# --------------------------------------------------------------------------- audio
#
# Speech models (Whisper): what run.py and verify.py need to turn a recording into the
# model's input_features on a device that has numpy and the standard library only. WAV
# files are decoded with the standard library's `wave`, plus a small RIFF reader for the PCM
# that `wave` refuses before Python 3.12 (WAVE_FORMAT_EXTENSIBLE headers, which many
# recorders write); other rates are resampled to the model's with a windowed-sinc filter.
#
# `whisper_features` reproduces transformers' (4.57) WhisperFeatureExtractor on its numpy
# path (the one it takes without torch) operation for operation and dtype for dtype: float32
# padding, reflect padding in float32, the STFT in float64 stored as complex64, the power
# and the mel projection in float64, log10 cast to float32, and the clamp and scaling in
# float32. With torch installed the extractor takes a float32 torch.stft path instead,
# which differs from its own numpy path by up to ~5e-5 (measured on speech-like audio).
# `wave`, `struct` and `math` are imported where they are used, like the runtimes.

# WhisperFeatureExtractor's constructor defaults: what transformers uses for a key the
# preprocessor_config.json leaves out.
WHISPER_DEFAULTS: dict[str, Any] = {
    "feature_size": 80,
    "sampling_rate": 16000,
    "hop_length": 160,
    "chunk_length": 30,
    "n_fft": 400,
    "padding_value": 0.0,
    "padding_side": "right",
}
_WAVE_PCM, _WAVE_EXTENSIBLE = 0x0001, 0xFFFE
_WAVE_FORMATS = {
    0x0002: "Microsoft ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
# A WAVE_FORMAT_EXTENSIBLE SubFormat GUID is the old format tag (2 bytes, little-endian)
# followed by these 14 bytes: KSDATAFORMAT_SUBTYPE_PCM is tag 1, ..._IEEE_FLOAT tag 3.
_SUBFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")
# The resampler's windowed sinc: zero crossings on each side (at the lower of the two
# rates), cutoff as a fraction of the lower Nyquist frequency, and the Kaiser window's beta.
# Measured 44.1 kHz → 16 kHz: flat to 7 kHz (-0.05 dB), -4.5 dB at 7.5 kHz, and tones from
# 8.5 kHz up (which would alias into the speech band) at -100 dB or below.
_RESAMPLE_ZEROS = 32
_RESAMPLE_ROLLOFF = 0.945
_RESAMPLE_BETA = 10.0
_RESAMPLE_BLOCK = 4096  # output samples per step: bounds the gathered (block, taps) arrays


class AudioError(ValueError):
    """An audio file this module will not read; the message is one line that says why."""


def read_wav(path: str | Path) -> tuple[Array, int]:
    """The file's samples as float32 mono in [-1, 1] (channels averaged), and its rate in Hz.

    Reads 8-bit (unsigned), 16-, 24- and 32-bit integer PCM, in a plain or an extensible
    header, at any rate and with any number of channels. Raises AudioError for anything
    else (float or compressed WAV, not a WAV file, no samples, a truncated file); a file
    that cannot be opened raises the OSError as usual.
    """
    import wave

    path = Path(path)
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width = handle.getnchannels(), handle.getsampwidth()
            rate, frames = handle.getframerate(), handle.getnframes()
            data = handle.readframes(frames)
    except (wave.Error, EOFError) as exc:
        # `wave` knows only format 1 before 3.12; read the header here to accept PCM in an
        # extensible header and to name any other format in the message.
        channels, width, rate, frames, data = _riff_pcm(path, exc)
    return _pcm_samples(path, data, channels, width, rate, frames), rate


def _riff_pcm(path: Path, cause: Exception) -> tuple[int, int, int, int, bytes]:
    """(channels, bytes per sample, rate, frames, sample bytes) of a PCM WAV `wave` refused."""
    import struct

    blob = path.read_bytes()
    if blob[:4] in (b"RIFX", b"RF64", b"BW64"):
        raise AudioError(f"{path}: {blob[:4].decode()} WAV is not supported; PCM in RIFF only")
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    fmt: bytes | None = None
    data: bytes | None = None
    declared, position = 0, 12  # chunks follow "RIFF", the size and "WAVE"
    while position + 8 <= len(blob) and data is None:
        kind, size = blob[position : position + 4], struct.unpack_from("<I", blob, position + 4)[0]
        body = blob[position + 8 : position + 8 + size]
        if kind == b"fmt ":
            fmt = body
        elif kind == b"data" and fmt is not None:
            data, declared = body, size
        position += 8 + size + (size & 1)  # chunks are padded to an even size
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{path}: truncated or malformed WAV: no complete format chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_EXTENSIBLE:
        if len(fmt) < 40 or fmt[26:40] != _SUBFORMAT_TAIL:
            raise AudioError(f"{path}: WAV with an unknown extensible sub-format; PCM only")
        tag = struct.unpack_from("<H", fmt, 24)[0]
    elif tag == _WAVE_PCM:  # plain PCM that `wave` itself refused: its reason is the one
        raise AudioError(f"{path}: malformed PCM WAV: {str(cause) or type(cause).__name__}")
    if tag != _WAVE_PCM:
        name = _WAVE_FORMATS.get(tag, "format")
        raise AudioError(
            f"{path}: {name} WAV (format 0x{tag:04x}) is not supported: "
            "integer PCM only; convert it to 16-bit PCM first"
        )
    if data is None:
        raise AudioError(f"{path}: truncated or malformed WAV: no data chunk")
    width = (bits + 7) // 8
    if channels < 1 or width < 1 or block_align != channels * width:
        raise AudioError(
            f"{path}: malformed WAV: {channels} channels of {bits} bits "
            f"in {block_align}-byte frames"
        )
    return channels, width, rate, declared // block_align, data


def _pcm_samples(
    path: Path, data: bytes, channels: int, width: int, rate: int, frames: int
) -> Array:
    if width not in (1, 2, 3, 4):
        raise AudioError(f"{path}: {8 * width}-bit PCM is not supported (8, 16, 24 or 32-bit)")
    if channels < 1 or rate < 1:
        raise AudioError(f"{path}: malformed WAV: {channels} channels at {rate} Hz")
    held = len(data) // (channels * width)
    if held < frames:
        raise AudioError(
            f"{path}: truncated WAV: the header promises {frames} frames, holds {held}"
        )
    if frames == 0:
        raise AudioError(f"{path}: the WAV holds no samples")
    count = frames * channels
    if width == 1:  # 8-bit WAV is unsigned, silence at 128
        values = np.frombuffer(data, np.uint8, count).astype(np.float64) - 128.0
    elif width == 3:  # no numpy dtype: place each sample in the top 3 bytes of an int32
        wide = np.zeros((count, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(data, np.uint8, count * 3).reshape(count, 3)
        values = wide.view("<i4").reshape(count).astype(np.float64) / 256.0
    else:
        values = np.frombuffer(data, f"<i{width}", count).astype(np.float64)
    # Full scale is 2 ** (bits - 1), so -full scale reads -1.0 and the largest value just
    # under 1.0; left-justified samples (20 valid bits in 24) scale correctly too.
    mono = values.reshape(frames, channels).mean(axis=1) / 2.0 ** (8 * width - 1)
    return mono.astype(np.float32)


def _kaiser(u: Array, beta: float) -> Array:
    """The Kaiser window over u in [-1, 1], zero outside."""
    inside = np.abs(u) <= 1.0
    root = np.sqrt(np.where(inside, 1.0 - u * u, 0.0))
    return np.where(inside, np.i0(beta * root) / np.i0(beta), 0.0)


def resample(samples: Array, from_rate: int, to_rate: int) -> Array:
    """1-D `samples` at `from_rate` Hz resampled to `to_rate` Hz, as float32.

    Band-limited: every output sample is the input filtered by a Kaiser-windowed sinc whose
    cutoff sits just under the lower of the two Nyquist frequencies, evaluated at the output
    sample's exact (rational) position, so downsampling 44.1 or 48 kHz speech to 16 kHz does
    not fold its upper harmonics into the speech band. The input is taken as silent beyond
    its ends; the result has ceil(len * to_rate / from_rate) samples.
    """
    import math

    x = np.asarray(samples, np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample takes mono (1-D) samples, not shape {x.shape}")
    for rate in (from_rate, to_rate):
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate < 1:
            raise ValueError(f"sample rates must be positive integers, not {rate!r}")
    if from_rate == to_rate:
        return x.astype(np.float32)
    common = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // common, int(from_rate) // common
    count = -(-len(x) * up // down)
    # Output n lies at input position n * down / up = base + phase / up: only `up` distinct
    # fractional positions exist, so the kernel is tabulated once per phase.
    cutoff = _RESAMPLE_ROLLOFF * min(1.0, up / down)  # in units of the input Nyquist frequency
    half = _RESAMPLE_ZEROS / cutoff  # the kernel's half-width, in input samples
    taps = math.ceil(half)
    offsets = np.arange(-taps + 1, taps + 1)  # inputs base - taps + 1 ... base + taps
    distance = np.arange(up)[:, None] / up - offsets[None, :]
    kernel = cutoff * np.sinc(cutoff * distance) * _kaiser(distance / half, _RESAMPLE_BETA)
    kernel /= kernel.sum(axis=1, keepdims=True)  # exactly unit gain at DC in every phase
    padded = np.concatenate([np.zeros(taps), x, np.zeros(taps + 1)])
    positions = np.arange(count, dtype=np.int64) * down
    result = np.empty(count)
    for start in range(0, count, _RESAMPLE_BLOCK):
        base, phase = np.divmod(positions[start : start + _RESAMPLE_BLOCK], up)
        rows = padded[(base + taps)[:, None] + offsets[None, :]]
        result[start : start + _RESAMPLE_BLOCK] = np.einsum("ij,ij->i", rows, kernel[phase])
    return result.astype(np.float32)


def load_audio(path: str | Path, sampling_rate: int) -> Array:
    """A WAV file as float32 mono samples at `sampling_rate` Hz (read_wav, then resample)."""
    samples, rate = read_wav(path)
    return resample(samples, rate, sampling_rate)


def _whisper_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The extractor settings of a preprocessor_config.json, checked, defaults filled in.

    n_samples and nb_max_frames are derived, never read: WhisperFeatureExtractor recomputes
    them from chunk_length, sampling_rate and hop_length whatever the file says. Likewise a
    stored `mel_filters` (older configs carry one) is ignored for the filters computed from
    the settings, and `dither` (random noise, 0 in Whisper's configs) is not applied: the
    features stay deterministic, which verify.py relies on.
    """
    settings = {key: config.get(key, default) for key, default in WHISPER_DEFAULTS.items()}
    for key in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"preprocessor config: {key} {value!r} is not a positive integer")
    if isinstance(settings["padding_value"], bool) or not isinstance(
        settings["padding_value"], Real
    ):
        raise ValueError(f"preprocessor config: padding_value {settings['padding_value']!r}")
    if settings["padding_side"] not in ("left", "right"):
        raise ValueError(f"preprocessor config: padding_side {settings['padding_side']!r}")
    settings["n_samples"] = settings["chunk_length"] * settings["sampling_rate"]
    settings["nb_max_frames"] = settings["n_samples"] // settings["hop_length"]
    return settings


def slaney_mel_filters(num_frequency_bins: int, num_mel_filters: int, sampling_rate: int) -> Array:
    """Whisper's mel filter bank, float64 (num_frequency_bins, num_mel_filters).

    transformers' `mel_filter_bank(num_frequency_bins, num_mel_filters, min_frequency=0.0,
    max_frequency=8000.0, sampling_rate, norm="slaney", mel_scale="slaney")`, the same
    numpy calls in the same order, so the two agree bit for bit. 8 kHz is fixed whatever
    the sampling rate, as in WhisperFeatureExtractor.
    """
    # Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above.
    mel_max = 15.0 + np.log(8000.0 / 1000.0) * (27.0 / np.log(6.4))
    mels = np.linspace(0.0, mel_max, num_mel_filters + 2)
    edges = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    edges[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    bins = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    widths = np.diff(edges)
    slopes = np.expand_dims(edges, 0) - np.expand_dims(bins, 1)
    falling = -slopes[:, :-2] / widths[:-1]
    rising = slopes[:, 2:] / widths[1:]
    filters: Array = np.maximum(np.zeros(1), np.minimum(falling, rising))
    # Slaney normalisation: each triangle divided by its width, for equal area.
    filters *= np.expand_dims(2.0 / (edges[2 : num_mel_filters + 2] - edges[:num_mel_filters]), 0)
    return filters


def whisper_windows(samples: Array, config: Mapping[str, Any]) -> list[Array]:
    """Mono float32 samples cut into consecutive chunk_length-second windows (30 s for
    Whisper); the last may be shorter (whisper_features pads it), and silence or no audio
    at all still gives one window."""
    x = np.asarray(samples, np.float32)
    if x.ndim != 1:
        raise ValueError(f"whisper_windows takes mono (1-D) samples, not shape {x.shape}")
    size = _whisper_settings(config)["n_samples"]
    return [x[start : start + size] for start in range(0, max(len(x), 1), size)]


def whisper_features(samples: Array, config: Mapping[str, Any]) -> Array:
    """Whisper's input_features for mono samples at config["sampling_rate"]: float32
    (1, feature_size, nb_max_frames), as WhisperFeatureExtractor(**config)(samples,
    sampling_rate=..., return_tensors="np") computes them on its numpy path.

    `config` is the parsed preprocessor_config.json. Audio longer than chunk_length seconds
    is truncated, as the extractor does; cut it with whisper_windows first to keep it all.
    """
    settings = _whisper_settings(config)
    x = np.asarray(samples, np.float32)
    if x.ndim != 1:
        raise ValueError(f"whisper_features takes mono (1-D) samples, not shape {x.shape}")
    size, n_fft, hop = settings["n_samples"], settings["n_fft"], settings["hop_length"]
    x = x[:size]
    if len(x) < size:
        gap = (size - len(x), 0) if settings["padding_side"] == "left" else (0, size - len(x))
        x = np.pad(x, gap, "constant", constant_values=settings["padding_value"])
    # center=True: reflect-pad half a frame each side (in float32, as transformers does),
    # then frames of n_fft every hop samples through a periodic Hann window, in float64.
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect").astype(np.float64)
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    # transformers stores the spectrum as complex64 before taking the power in float64.
    spectrum = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    filters = slaney_mel_filters(
        1 + n_fft // 2, settings["feature_size"], settings["sampling_rate"]
    )
    mel = np.maximum(1e-10, np.dot(filters.T, power.T))
    log_spec = np.asarray(np.log10(mel), np.float32)[:, :-1]  # the last frame is dropped
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)  # at most 80 dB below the peak
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec[np.newaxis]


# --------------------------------------------------------------------------- seq2seq
#
# Encoder-decoder models (Whisper, T5, Marian) ship as two graphs: the encoder, run once
# per input, and a decoder with a KV cache. A decoder's run function keeps its cache
# itself: given `encoder_hidden_states` it starts a new sequence (an empty cache; the
# cross-attention keys and values are computed from those states), without them it goes
# on from where the last call ended. So one greedy loop (`greedy_decode`) drives ONNX
# Runtime's merged decoder (`use_cache_branch`, the cache passed in and out) and
# OpenVINO's stateful decoder (the cache kept inside the infer request) alike, and the
# host drives the PyTorch original through the same loop.

ASR_TASK = "automatic-speech-recognition-with-past"
TEXT2TEXT_TASK = "text2text-generation-with-past"
SEQ2SEQ_TASKS = frozenset({ASR_TASK, TEXT2TEXT_TASK})
ENCODER_STATES = "encoder_hidden_states"
USE_CACHE_BRANCH = "use_cache_branch"
LOGITS = "logits"


def is_seq2seq_decoder(input_names: Iterable[str]) -> bool:
    """A decoder that reads an encoder's states: its run function keeps a KV cache."""
    return ENCODER_STATES in set(input_names)


def onnxruntime_seq2seq_decoder(session: Any) -> RunFn:
    """ONNX Runtime's merged decoder (optimum's decoder_model_merged.onnx): the first step
    takes the `use_cache_branch=False` path with empty past tensors; the others the
    cached path, fed the previous step's `present.*.decoder.*` and the first step's
    `present.*.encoder.*` (the cross-attention cache, fixed for the whole sequence)."""
    inputs = session.get_inputs()
    input_names = {i.name for i in inputs}
    output_names = [o.name for o in session.get_outputs()]
    past = [
        (i.name, i.shape[1], i.shape[3], onnx_dtype(i.type))
        for i in inputs
        if i.name.startswith(PAST_PREFIX)
    ]
    state: dict[str, Array] = {}

    def run(feeds: Mapping[str, Array]) -> Outputs:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        if ENCODER_STATES in feeds:  # a new sequence
            state.clear()
            state[ENCODER_STATES] = np.asarray(feeds[ENCODER_STATES], dtype=np.float32)
            full = {name: np.zeros((ids.shape[0], h, 0, d), t) for name, h, d, t in past}
            started = False
        elif not state:
            raise BundleError("a seq2seq decoder was continued before any sequence started")
        else:
            full = {name: state[name] for name, _, _, _ in past}
            started = True
        full["input_ids"] = ids
        full[ENCODER_STATES] = state[ENCODER_STATES]
        full.update(_encoder_mask(input_names, state[ENCODER_STATES]))
        if USE_CACHE_BRANCH in input_names:
            full[USE_CACHE_BRANCH] = np.array([started])
        elif started:
            raise BundleError("this decoder graph has no cached branch (use_cache_branch)")
        results = dict(zip(output_names, session.run(None, full), strict=True))
        for name, _, _, _ in past:
            present = "present" + name[len(PAST_PREFIX) - 1 :]
            if not (started and ".encoder." in name):
                state[name] = results[present]
        return {LOGITS: results[LOGITS]}

    return run


def openvino_seq2seq_decoder(compiled: Any) -> RunFn:
    """OpenVINO's stateful decoder (optimum-intel's openvino_decoder_model.xml): the cache
    lives in the infer request; a new sequence resets it."""
    request = compiled.create_infer_request()
    input_names = {port.get_any_name() for port in compiled.inputs}
    state: dict[str, Array] = {}

    def run(feeds: Mapping[str, Array]) -> Outputs:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        if ENCODER_STATES in feeds:
            request.reset_state()
            state[ENCODER_STATES] = np.asarray(feeds[ENCODER_STATES], dtype=np.float32)
        elif not state:
            raise BundleError("a seq2seq decoder was continued before any sequence started")
        request.infer(
            {
                "input_ids": ids,
                ENCODER_STATES: state[ENCODER_STATES],
                "beam_idx": np.arange(ids.shape[0], dtype=np.int32),
                **_encoder_mask(input_names, state[ENCODER_STATES]),
            }
        )
        return {LOGITS: np.array(request.get_tensor(LOGITS).data, copy=True)}

    return run


def _encoder_mask(input_names: set[str], states: Array) -> dict[str, Array]:
    """T5's and BART's decoders also take the encoder's mask (one unpadded input)."""
    if "encoder_attention_mask" not in input_names:
        return {}
    return {"encoder_attention_mask": np.ones(states.shape[:2], dtype=np.int64)}


class DecodingRules(NamedTuple):
    """Greedy decoding as the model's generation_config asks: the decoder's first tokens
    (`prompt`: decoder_start_token_id, then Whisper's forced language/task/notimestamps
    tokens), the tokens that end it, tokens never generated (`suppress`) or not as the
    first token (`begin_suppress`), and at most `max_new_tokens` generated."""

    prompt: tuple[int, ...]
    eos: frozenset[int]
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]
    max_new_tokens: int

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> DecodingRules:
        rules = spec.get("decoding")
        if not isinstance(rules, dict):
            raise BundleError(f"{MANIFEST}: runtime.decoding is missing")
        try:
            return cls(
                prompt=tuple(int(t) for t in rules["prompt"]),
                eos=frozenset(int(t) for t in rules["eos"]),
                suppress=tuple(int(t) for t in rules.get("suppress", ())),
                begin_suppress=tuple(int(t) for t in rules.get("begin_suppress", ())),
                max_new_tokens=int(rules["max_new_tokens"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST}: runtime.decoding is malformed: {exc}") from exc

    def as_spec(self) -> dict[str, Any]:
        return {
            "prompt": list(self.prompt),
            "eos": sorted(self.eos),
            "suppress": list(self.suppress),
            "begin_suppress": list(self.begin_suppress),
            "max_new_tokens": self.max_new_tokens,
        }

    def choose(self, logits: Array, first: bool) -> int:
        """The greedy token after the suppression rules."""
        scores = np.array(logits, dtype=np.float64, copy=True)
        # Ids past the vocabulary are ignored, as transformers' processors ignore them.
        banned = [*self.suppress, *(self.begin_suppress if first else ())]
        banned = [t for t in banned if 0 <= t < len(scores)]
        if banned:
            scores[banned] = -np.inf
        return int(scores.argmax())


def greedy_decode(decoder: RunFn, encoder_states: Array, rules: DecodingRules) -> list[int]:
    """The generated tokens (prompt and end token excluded) of greedy decoding through
    the decoder's KV cache."""
    ids = np.array([list(rules.prompt)], dtype=np.int64)
    outputs = decoder({"input_ids": ids, ENCODER_STATES: encoder_states})
    generated: list[int] = []
    while len(generated) < rules.max_new_tokens:
        token = rules.choose(np.asarray(outputs[LOGITS])[0, -1], first=not generated)
        if token in rules.eos:
            break
        generated.append(token)
        if len(generated) == rules.max_new_tokens:
            break
        outputs = decoder({"input_ids": np.array([[token]], dtype=np.int64)})
    return generated


def teacher_forced(
    decoder: RunFn, encoder_states: Array, rules: DecodingRules, tokens: Sequence[int]
) -> list[int]:
    """The decoder's greedy choice at every position of `tokens` (and of the end token
    after them), fed the prompt and `tokens` in one pass: what it would say next if
    every earlier token were right."""
    ids = np.array([list(rules.prompt) + list(tokens)], dtype=np.int64)
    logits = np.asarray(decoder({"input_ids": ids, ENCODER_STATES: encoder_states})[LOGITS])[0]
    start = len(rules.prompt) - 1
    return [rules.choose(logits[start + k], first=k == 0) for k in range(len(tokens) + 1)]


def encode(run: RunFn, feeds: Mapping[str, Array]) -> Array:
    """The encoder's states for one input (the encoder's first output)."""
    outputs = run(feeds)
    return np.asarray(outputs.get("last_hidden_state", next(iter(outputs.values()))))


TOKENS = "tokens"  # a seq2seq model's output as verify.py compares it: the generated ids


def seq2seq_runtime(runs: Mapping[str, RunFn], spec: Mapping[str, Any]) -> RunFn:
    """An encoder-decoder bundle as one run function: encoder feeds in, the greedily
    generated token ids (`tokens`, int64 (n,)) out."""
    rules = DecodingRules.from_spec(spec)
    try:
        encoder, decoder = runs["encoder"], runs["decoder"]
    except KeyError as exc:
        raise BundleError(
            f"{MANIFEST}: a seq2seq model needs an encoder and a decoder part"
        ) from exc

    def run(feeds: Mapping[str, Array]) -> Outputs:
        states = encode(encoder, feeds)
        return {TOKENS: np.array(greedy_decode(decoder, states, rules), dtype=np.int64)}

    return run


# Token ids back to text, from a tokenizer.json, with the standard library: a bundle that
# runs a speech model needs no tokenizer package. Byte-level BPE (GPT-2, Whisper, BART)
# and Metaspace (SentencePiece: T5, Marian) decoders are read; others are refused.


def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, reversed (tokens spell bytes with these)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class Detokenizer:
    """`decode(ids)` as the `tokenizers` library decodes with skip_special_tokens=True."""

    def __init__(self, path: Path) -> None:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = data.get("model") or {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            tokens = {int(i): str(t) for t, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            tokens = {i: str(entry[0]) for i, entry in enumerate(vocab)}
        else:
            raise BundleError(f"{path}: no vocabulary in the tokenizer's model")
        self.special: set[int] = set()
        for added in data.get("added_tokens") or []:
            tokens[int(added["id"])] = str(added["content"])
            if added.get("special"):
                self.special.add(int(added["id"]))
        self.tokens = tokens
        self.kind, self.replacement = self._decoder_kind(data.get("decoder"), path)
        self.bytes = _byte_level_table() if self.kind == "byte-level" else {}

    @staticmethod
    def _decoder_kind(decoder: Any, path: Path) -> tuple[str, str]:
        steps = decoder.get("decoders", [decoder]) if isinstance(decoder, dict) else []
        for step in steps:
            kind = step.get("type") if isinstance(step, dict) else None
            if kind == "ByteLevel":
                return "byte-level", ""
            if kind == "Metaspace":
                return "metaspace", str(step.get("replacement", "\u2581"))
        raise BundleError(f"{path}: run.py decodes ByteLevel and Metaspace tokenizers only")

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.tokens.get(int(i), "") for i in ids if int(i) not in self.special]
        text = "".join(pieces)
        if self.kind == "byte-level":
            data = bytes(self.bytes[c] for c in text if c in self.bytes)
            return data.decode("utf-8", errors="replace")
        text = text.replace(self.replacement, " ")
        return text[1:] if text.startswith(" ") else text


# Scores of a converted model's outputs against the original's, the same on the host and
# the device: word error rate (speech) and chrF (translation), both of a hypothesis
# against a reference text.


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation: how a transcript is compared word by word."""
    kept = "".join(c.lower() if c.isalnum() or c in "'" else " " for c in text)
    return kept.split()


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(word edits, reference words): summed over utterances they give the corpus WER."""
    ref = normalise_words(reference)
    return edit_distance(normalise_words(hypothesis), ref), len(ref)


def chrf(hypotheses: Sequence[str], references: Sequence[str], order: int = 6) -> float:
    """Corpus chrF (0–100) as sacrebleu computes it: character n-grams 1..6 without
    spaces, statistics summed over the corpus, F-score with beta 2. One difference: when
    neither side has a character, sacrebleu says 0 and this says 100 (nothing said where
    the original said nothing is agreement)."""
    from collections import Counter

    matches = [0] * order
    hyp_total = [0] * order
    ref_total = [0] * order
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = hypothesis.replace(" ", ""), reference.replace(" ", "")
        for n in range(1, order + 1):
            hyp_grams = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
            ref_grams = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
            matches[n - 1] += sum((hyp_grams & ref_grams).values())
            # sacrebleu counts no hypothesis n-grams where the reference has none.
            hyp_total[n - 1] += sum(hyp_grams.values()) if ref_grams else 0
            ref_total[n - 1] += sum(ref_grams.values())
    # sacrebleu's default: precision and recall averaged over the orders that occur in
    # both texts ("effective order"), then one F-beta of the averages.
    used = [n for n in range(order) if hyp_total[n] and ref_total[n]]
    if not used:  # nothing to match: right only when both sides said nothing
        same = [h.split() for h in hypotheses] == [r.split() for r in references]
        return 100.0 if same else 0.0
    precision = sum(matches[n] / hyp_total[n] for n in used) / len(used)
    recall = sum(matches[n] / ref_total[n] for n in used) / len(used)
    beta2 = 4.0
    if precision + recall == 0:
        return 0.0
    return 100.0 * (1 + beta2) * precision * recall / (beta2 * precision + recall)


def seq2seq_metrics(
    reference: Sequence[Sequence[int]],
    actual: Sequence[Sequence[int]],
    reference_texts: Sequence[str],
    actual_texts: Sequence[str],
) -> dict[str, float]:
    """Generated token ids and their texts, the original's against the converted model's:
    the share of inputs with identical output, the word error rate and chrF of the
    converted text against the original's, and how many outputs came out empty where
    the original said something."""
    pairs = list(zip(reference, actual, strict=True))
    identical = sum(list(r) == list(a) for r, a in pairs) / max(len(pairs), 1)
    edits = words = 0
    for hypothesis, ref_text in zip(actual_texts, reference_texts, strict=True):
        e, w = word_errors(hypothesis, ref_text)
        edits, words = edits + e, words + w
    empty = sum(
        1
        for ref_text, text in zip(reference_texts, actual_texts, strict=True)
        if ref_text.strip() and not text.strip()
    )
    return {
        "output_identical": identical,
        "wer": edits / max(words, 1),
        "chrf": chrf(list(actual_texts), list(reference_texts)),
        "empty_outputs": float(empty),
    }


def token_metrics(reference: Sequence[Array], actual: Sequence[Array]) -> dict[str, float]:
    """Generated ids, token by token: the share of inputs whose output is identical, and
    token agreement (1 - token edits / the original's tokens, over all inputs)."""
    pairs = [(list(map(int, r)), list(map(int, a))) for r, a in zip(reference, actual, strict=True)]
    edits = sum(edit_distance(a, r) for r, a in pairs)
    total = sum(len(r) for r, _ in pairs)
    return {
        "output_identical": sum(r == a for r, a in pairs) / max(len(pairs), 1),
        "token_agreement": max(0.0, 1.0 - edits / max(total, 1)),
    }
