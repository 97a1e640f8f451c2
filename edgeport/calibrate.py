"""`edgeport profiles calibrate PROFILE --on ssh://...`: speedups measured on the device.

The recipes guess how much faster each precision runs on a CPU (`expect.speedup_by_feature`);
a calibration measures it on a device of the profile and the planner uses the measurement
instead (planner.measured_speedup). What is measured is the kernels a recipe changes, not a
model: a transformer-like stack of MatMul + Add, LayerNorm and Gelu with deterministic
random weights (numpy seed), built here with onnx's helper API, then converted by the same
code the backends use, with the knobs of the catalogue's recipe for that scheme resolved for
the profile (accuracy_level, group sizes, formats):

- ONNX Runtime: fp32; fp16 (onnxruntime.transformers.float16, inputs and outputs fp32);
  int8-dynamic (quantize_dynamic); int8-static-qdq and int8-static-qoperator
  (quantize_static, min-max on random activations); int8-weight and int4-weight
  (MatMulNBits, every MatMul).
- OpenVINO, where the profile lists it, the device has it and this host has the `openvino`
  extra: fp32 (IR); fp16 (IR with fp16 weights, f32 inference precision as the runner);
  int8-static (NNCF quantize); int8-weight and int4-weight (NNCF compress_weights, every
  layer).

Only the keys some recipe of the catalogue would look up are built. The graphs travel as
one deterministic archive through the device agent (device.py: sha256 checked on the
device, temporary folder removed whatever happens) with time_graphs.py, which times two
shapes, each graph after a warm-up and with the caches flushed before every run: `batch`
(`tokens` rows through every layer, as an encoder or a prompt) and `decode` (one row, as
a decoding step, where reading the weights dominates), with the profile's core count as
intra-op threads. Speedups are medians' ratios against ONNX Runtime fp32 on the same
device (the planner's unit) and against each runtime's own fp32. The result is a
Calibration (schemas.py), written atomically as YAML to review in a pull request like a
profile.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import (
    BadInputError,
    DoesNotFitError,
    EdgeportError,
    UnsupportedError,
    VerificationError,
)
from edgeport.progress import Progress
from edgeport.schemas import (
    Calibration,
    CalibrationMethod,
    MeasuredOn,
    Quantization,
    SkippedMeasurement,
    calibration_entry,
    calibration_keys,
)

if TYPE_CHECKING:
    from edgeport.schemas import DeviceProfile, Recipe

CALIBRATIONS_FOLDER = "calibrations"
DEFAULT_LAYERS = 4
DEFAULT_HIDDEN = 384
DEFAULT_TOKENS = 256
DEFAULT_WARMUP = 3
DEFAULT_RUNS = 10
SEED = 0
FFN_FACTOR = 4
OPSET = 17
IR_VERSION = 8  # what ONNX Runtime releases since 1.10 read: older devices too
INPUT_NAME = "hidden_states"
DYNAMIC = ("batch", "tokens")
CALIBRATION_BATCHES = 4
# Written between timed runs, so that the weights come from memory (a model larger than
# the caches); larger than the last-level cache of the CPUs edgeport's profiles name.
FLUSH_MB = 64
# The baseline timed first and last: a larger change says the device slowed down.
DRIFT_LIMIT = 0.1
SPEC_FILE = "graphs.json"
SCRIPT = "time_graphs.py"
RUN_TIMEOUT_S = 3600
# What the device's probe asks for: numpy and every runtime a reference graph exists for.
RUNTIMES = ("onnxruntime", "openvino")
# Keys with a reference graph, per runtime, in the order they are measured and tabulated.
BUILDABLE: dict[str, tuple[str, ...]] = {
    "onnxruntime": (
        "fp32",
        "fp16",
        "int8-dynamic",
        "int8-static-qdq",
        "int8-static-qoperator",
        "int8-weight",
        "int4-weight",
    ),
    "openvino": ("fp32", "fp16", "int8-static", "int8-weight", "int4-weight"),
}
_SCHEME = {
    "fp32": "none",
    "fp16": "fp16",
    "int8-dynamic": "int8-dynamic",
    "int8-static": "int8-static",
    "int8-static-qdq": "int8-static",
    "int8-static-qoperator": "int8-static",
    "int8-weight": "int8-weight",
    "int4-weight": "int4-weight",
}


class _Quiet:
    def stage(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def candidate(self, index: int, total: int, name: str) -> None:
        pass


@dataclass(frozen=True)
class GraphSpec:
    """The reference graph: `layers` transformer-like layers of width `hidden`."""

    layers: int = DEFAULT_LAYERS
    hidden: int = DEFAULT_HIDDEN
    tokens: int = DEFAULT_TOKENS
    seed: int = SEED

    @property
    def ffn(self) -> int:
        return self.hidden * FFN_FACTOR

    @property
    def weights(self) -> int:
        """MatMul weights: four hidden x hidden projections and the two MLP matrices a layer."""
        return self.layers * (4 * self.hidden**2 + 2 * self.hidden * self.ffn)

    def shape(self, name: str) -> tuple[int, int, int]:
        """The input of a timed shape: `batch` (all the tokens at once) or `decode` (one)."""
        return (1, self.tokens if name == "batch" else 1, self.hidden)

    def describe(self) -> str:
        return (
            f"{self.layers} layers of 4 MatMul+Add {self.hidden}x{self.hidden} (attention's "
            f"projections), Add+LayerNorm, MatMul+Add {self.hidden}x{self.ffn}, Gelu, MatMul+Add "
            f"{self.ffn}x{self.hidden}, Add+LayerNorm; {self.weights / 1e6:.1f} M weights, "
            f"numpy seed {self.seed}"
        )


@dataclass(frozen=True)
class Graph:
    target: str
    key: str
    file: str  # relative to the archive's root
    how: str


@dataclass
class ReferenceGraphs:
    graphs: list[Graph] = field(default_factory=list)
    skipped: list[SkippedMeasurement] = field(default_factory=list)


# --------------------------------------------------------------------------- graphs


def reference_onnx(spec: GraphSpec) -> Any:
    """The fp32 reference graph (onnx ModelProto): `hidden_states` [batch, tokens, hidden]
    in, the same shape out (3-D, as exported transformers: 2-D MatMul+Add would be fused
    into Gemm, which the quantisers' MatMul op types miss)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(spec.seed)
    nodes: list[Any] = []
    weights: list[Any] = []

    def constant(name: str, value: Any) -> str:
        weights.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        w = constant(f"{name}.weight", rng.standard_normal((n_in, n_out)) * n_in**-0.5)
        b = constant(f"{name}.bias", rng.standard_normal(n_out) * 0.02)
        return node("Add", [node("MatMul", [x, w], f"{name}/MatMul"), b], f"{name}/Add")

    def norm(x: str, name: str) -> str:
        gamma = constant(f"{name}.weight", np.ones(spec.hidden))
        beta = constant(f"{name}.bias", np.zeros(spec.hidden))
        return node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-5)

    def gelu(x: str, name: str) -> str:  # as transformers exports it (ORT fuses it to Gelu)
        root2 = constant(f"{name}.sqrt2", np.sqrt(2.0))
        one, half = constant(f"{name}.one", 1.0), constant(f"{name}.half", 0.5)
        erf = node("Erf", [node("Div", [x, root2], f"{name}/Div")], f"{name}/Erf")
        scaled = node("Mul", [x, node("Add", [erf, one], f"{name}/Add")], f"{name}/Mul")
        return node("Mul", [scaled, half], f"{name}/Mul_1")

    x = INPUT_NAME
    for index in range(spec.layers):
        prefix = f"layers.{index}"
        y = x
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            y = linear(y, f"{prefix}.attention.{projection}", spec.hidden, spec.hidden)
        x = norm(node("Add", [x, y], f"{prefix}/attention/Add"), f"{prefix}.attention_norm")
        y = gelu(linear(x, f"{prefix}.mlp.up_proj", spec.hidden, spec.ffn), f"{prefix}.mlp.act")
        y = linear(y, f"{prefix}.mlp.down_proj", spec.ffn, spec.hidden)
        x = norm(node("Add", [x, y], f"{prefix}/mlp/Add"), f"{prefix}.mlp_norm")
    nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    graph = helper.make_graph(
        nodes,
        "edgeport-reference",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [*DYNAMIC, spec.hidden])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [*DYNAMIC, spec.hidden])],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeport"
    )
    model.ir_version = IR_VERSION
    return model


def calibration_feeds(spec: GraphSpec) -> list[dict[str, Any]]:
    """Activations for static int8's ranges: random rows like the timed ones (other seed)."""
    import numpy as np

    rng = np.random.default_rng(spec.seed + 1)
    return [
        {INPUT_NAME: rng.standard_normal(spec.shape("batch")).astype(np.float32)}
        for _ in range(CALIBRATION_BATCHES)
    ]


def keys_to_measure(target: str, recipes: Iterable[Recipe]) -> list[str]:
    """The keys some recipe of `target` looks up first, in BUILDABLE's order (others last)."""
    wanted = {calibration_keys(r)[0] for r in recipes if r.target == target}
    order = BUILDABLE.get(target, ())
    return sorted(wanted, key=lambda k: (order.index(k) if k in order else len(order), k))


def recipe_quantization(
    target: str, key: str, recipes: Iterable[Recipe], profile: DeviceProfile
) -> tuple[Quantization, str]:
    """The quantisation of the catalogue's safest recipe for (target, key), resolved for
    the profile, less what picks layers (the reference measures every MatMul)."""
    from edgeport.planner import for_device

    matching = sorted(
        (r for r in recipes if r.target == target and calibration_keys(r)[0] == key),
        key=lambda r: (r.safety, r.id),
    )
    if not matching:
        return Quantization.model_validate({"scheme": _SCHEME[key]}), "defaults"
    recipe = for_device(matching[0], profile)
    quantization = recipe.quantize.model_copy(
        update={
            "exclude_nodes": [],
            "ignored_patterns": [],
            "keep_int8_patterns": [],
            "mixed_precision": False,
            "all_layers": True,
            "algorithm": "rtn",
        }
    )
    return quantization, recipe.id


def _block(wanted: int, sizes: Sequence[int]) -> int:
    """The largest power of two up to `wanted` that divides every size (at least 16)."""
    block = 1 << max(4, wanted.bit_length() - 1)
    while block > 16 and any(size % block for size in sizes):
        block //= 2
    return block


def _ort_graph(
    key: str, quantization: Quantization, base: Path, out: Path, spec: GraphSpec, work: Path
) -> str:
    """Build ONNX Runtime's `key` variant of `base` at `out`; how, in words."""
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    if key == "fp16":
        backend._to_fp16(base, out, quantization)
        return "onnxruntime.transformers.float16, inputs and outputs fp32"
    if key == "int8-dynamic":
        backend._quantize_dynamic(base, out, quantization)
        channel = "per channel" if quantization.per_channel else "per tensor"
        return f"quantize_dynamic, {quantization.weight_type} weights {channel}"
    if key.startswith("int8-static"):
        work.mkdir(parents=True, exist_ok=True)
        backend._quantize_static(base, out, quantization, calibration_feeds(spec), work)
        return (
            f"quantize_static {quantization.format}, {quantization.calibration_method} on "
            f"{CALIBRATION_BATCHES} random batches, {quantization.activation_type} activations"
        )
    if key in {"int8-weight", "int4-weight"}:
        import onnx

        from edgeport.backends.onnxruntime_decoder import _matmul_nbits

        bits = 4 if key == "int4-weight" else 8
        wanted = (quantization.group_size or 128) if bits == 4 else 256
        if bits == 8 and quantization.int8_group_size:
            wanted = quantization.int8_group_size
        block = _block(wanted, [spec.hidden, spec.ffn])
        model = onnx.load(str(base))
        names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
        level = quantization.accuracy_level or 0
        symmetric = quantization.symmetric or bits == 8
        onnx.save(_matmul_nbits(model, names, bits, block, symmetric, level), str(out))
        return (
            f"MatMulNBits {bits}-bit, block {block}, "
            f"{'symmetric' if symmetric else 'asymmetric'}, accuracy_level {level}, every MatMul"
        )
    raise UnsupportedError(f"no ONNX Runtime reference graph for {key}")


def _ov_graph(key: str, quantization: Quantization, base: Path, out: Path, spec: GraphSpec) -> str:
    """Build OpenVINO's `key` variant of `base` as IR at `out` (.xml); how, in words."""
    import openvino as ov

    from edgeport.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend()
    ir = ov.Core().read_model(str(base))
    # An IR, as bundles ship: OpenVINO runs an ONNX file it reads itself more slowly.
    how = "IR (ov.save_model)"
    if key == "int8-static":
        ir = backend._quantize_static(ir, quantization, calibration_feeds(spec), [INPUT_NAME])
        how = f"NNCF quantize on {CALIBRATION_BATCHES} random batches"
    elif key == "int8-weight":
        ir = backend._compress_int8(ir, quantization)
        how = f"NNCF compress_weights int8 {'sym' if quantization.symmetric else 'asym'}"
    elif key == "int4-weight":
        ir, note = backend._compress_int4(ir, quantization)
        how = f"NNCF compress_weights, every layer: {note}"
    elif key == "fp16":
        how = "IR with fp16 weights (f32 inference precision on CPU, as the runner)"
    elif key != "fp32":
        raise UnsupportedError(f"no OpenVINO reference graph for {key}")
    ov.save_model(ir, str(out), compress_to_fp16=key == "fp16")
    return how


def build_reference_graphs(
    spec: GraphSpec,
    folder: Path,
    runtimes: Sequence[str],
    recipes: Sequence[Recipe],
    profile: DeviceProfile,
    progress: Progress | None = None,
) -> ReferenceGraphs:
    """Write the fp32 graph and every variant some recipe of `runtimes` needs into `folder`."""
    progress = progress or _Quiet()
    with _quiet_libraries():
        return _build(spec, folder, runtimes, recipes, profile, progress)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """The quantisers' logs, progress bars and tables are about reference graphs nobody
    ships: errors only (stdout belongs to `--json` in any case)."""
    import logging

    import onnxruntime

    # Every logger, whatever level a library sets on itself when it is imported meanwhile.
    logging.disable(logging.WARNING)
    onnxruntime.set_default_logger_severity(3)  # its C++ warnings about unused initialisers
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
        onnxruntime.set_default_logger_severity(2)


def _build(
    spec: GraphSpec,
    folder: Path,
    runtimes: Sequence[str],
    recipes: Sequence[Recipe],
    profile: DeviceProfile,
    progress: Progress,
) -> ReferenceGraphs:
    import onnx

    built = ReferenceGraphs()
    base = folder / "fp32.onnx"
    onnx.save(reference_onnx(spec), str(base))
    for target in runtimes:
        for key in keys_to_measure(target, recipes):
            if key not in BUILDABLE.get(target, ()):
                built.skipped.append(
                    SkippedMeasurement(
                        target=target, key=key, reason="edgeport has no reference graph for it"
                    )
                )
                continue
            if key == "fp32" and target == "onnxruntime":
                built.graphs.append(Graph(target, key, base.name, "the reference graph"))
                continue
            quantization, source = recipe_quantization(target, key, recipes, profile)
            clock = time.perf_counter()
            suffix = ".onnx" if target == "onnxruntime" else ".xml"
            out = folder / f"{target}-{key}{suffix}"
            try:
                if target == "onnxruntime":
                    how = _ort_graph(key, quantization, base, out, spec, folder / f".work-{key}")
                else:
                    how = _ov_graph(key, quantization, base, out, spec)
            except (EdgeportError, ModuleNotFoundError):
                raise
            except Exception as exc:  # a converter that cannot take this graph
                reason = f"could not build it here: {type(exc).__name__}: {exc}"
                built.skipped.append(SkippedMeasurement(target=target, key=key, reason=reason))
                continue
            finally:
                shutil.rmtree(folder / f".work-{key}", ignore_errors=True)
            how = f"{how} (knobs of {source})" if source != "defaults" else how
            progress.info(f"{target} {key}: {how} ({time.perf_counter() - clock:.1f} s)")
            built.graphs.append(Graph(target, key, out.name, how))
    return built


# --------------------------------------------------------------------------- archive


def pack_folder(folder: Path, out: Path) -> tuple[int, str]:
    """A deterministic .tar.gz of the files in `folder` (sorted, mtime 0, 0644, uid 0);
    its size and sha256."""
    with (
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    digest = hashlib.sha256()
    with out.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return out.stat().st_size, digest.hexdigest()


# --------------------------------------------------------------------------- device


def check_calibration_device(
    profile: DeviceProfile, facts: Mapping[str, Any], target: str, python: str, baseline: Recipe
) -> None:
    """Refuse a device that cannot stand for the profile, before anything is built or sent:
    it needs numpy and the runtime of the catalogue's `baseline` recipe."""
    packages = facts["packages"]
    for module, why in (("numpy", ""), (baseline.target, ", the baseline of every speedup")):
        if packages.get(module) is None:
            raise UnsupportedError(
                f"{target}: {module} is not installed for {python}{why}: pip install {module}"
            )
    have = facts["cpu"]
    if have["arch"] != profile.cpu.arch:
        raise DoesNotFitError(
            f"{target}: the device's CPU is {have['arch']} ({have['machine']}); profile "
            f"{profile.id} is {profile.cpu.arch}"
        )
    if have["features"] is not None:
        missing = [f for f in profile.cpu.features if f not in have["features"]]
        if missing:
            raise DoesNotFitError(
                f"{target}: the device's CPU ({have['name']}) lacks {', '.join(missing)}, which "
                f"profile {profile.id} lists: its speed would not be the profile's "
                "(`edgeport profiles detect` on it writes its own profile)"
            )


def _host_lacks(modules: Iterable[str]) -> list[str]:
    """The modules of `modules` this host cannot import."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def _run_on_device(
    folder: Path,
    work: Path,
    target: Any,
    python: str,
    ssh_options: Sequence[str],
    timeout_s: float,
) -> dict[str, Any]:
    from edgeport.device import _call_agent

    archive = work / "graphs.tar.gz"
    size, sha256 = pack_folder(folder, archive)
    report, _ = _call_agent(
        target,
        python,
        {
            "action": "run",
            "archive_bytes": size,
            "archive_sha256": sha256,
            "argv": [SCRIPT, SPEC_FILE],
        },
        options=ssh_options,
        stdin=archive,
        timeout_s=timeout_s,
    )
    transfer = report.get("transfer") or {}
    if not transfer.get("matches"):
        raise VerificationError(
            f"{target}: the reference graphs changed on the way ({transfer.get('bytes')} of "
            f"{size} bytes arrived, sha256 {str(transfer.get('sha256'))[:16]}…); nothing ran"
        )
    if report.get("unpack_error"):
        raise EdgeportError(f"{target}: cannot unpack the graphs: {report['unpack_error']}")
    result = report.get("result")
    if report.get("exit_code") != 0 or not isinstance(result, dict):
        tail = str(report.get("stderr_tail") or "").strip().splitlines()
        raise EdgeportError(
            f"{target}: {SCRIPT} ended with exit code {report.get('exit_code')}"
            + (f": {tail[-1]}" if tail else "")
            + (
                " (killed: out of memory? try --hidden 256)"
                if report.get("exit_code") == -9
                else ""
            )
        )
    result["peak_memory_mb"] = report.get("peak_memory_mb")
    return result


def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """A speedup, to 4 significant digits (tables that derive from each other still agree)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return _significant(numerator / denominator, 4)


def calibration_from_timings(
    profile: DeviceProfile,
    facts: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    method: CalibrationMethod,
    skipped: Sequence[SkippedMeasurement],
    date: datetime,
    baseline: Recipe,
    drift: Mapping[str, float] | None = None,
) -> Calibration:
    """The calibration from time_graphs.py's results: speedups are ratios of medians, over
    the catalogue's `baseline` recipe's entry. `drift` (shape -> last/first - 1 of the
    baseline's two blocks) beyond DRIFT_LIMIT becomes a note: the device slowed down (or
    sped up) while it was measured."""
    from edgeport import __version__

    base_target, base_key = calibration_entry(baseline)
    skipped = list(skipped)
    notes = [
        f"{base_target} {base_key} (the baseline) ran {abs(change):.0%} "
        f"{'slower' if change > 0 else 'faster'} at "
        f"the end of the {shape} timings than at their start: the device may throttle "
        "(heat) or be busy; these speedups are less certain, measure again cooled and idle"
        for shape, change in sorted((drift or {}).items())
        if abs(change) > DRIFT_LIMIT
    ]
    latency: dict[str, dict[str, dict[str, float]]] = {"batch": {}, "decode": {}}
    for result in results:
        target, key = str(result["target"]), str(result["key"])
        if result.get("error"):
            reason = f"failed on the device: {result['error']}"
            skipped.append(
                SkippedMeasurement.model_validate({"target": target, "key": key, "reason": reason})
            )
            continue
        for shape, ms in (result.get("shapes") or {}).items():
            if shape in latency and isinstance(ms, int | float) and ms > 0:
                latency[shape].setdefault(target, {})[key] = float(ms)
    base = {shape: latency[shape].get(base_target, {}).get(base_key) for shape in latency}
    if base["batch"] is None:
        failed = next(
            (s.reason for s in skipped if s.target == base_target and s.key == base_key),
            "no timing came back",
        )
        raise EdgeportError(
            f"{base_target} {base_key}, the baseline, did not run on the device: {failed}"
        )
    tables: dict[str, dict[str, dict[str, float]]] = {
        "speedups": {},
        "speedups_vs_own_fp32": {},
        "decode_speedups": {},
    }
    for target, row in latency["batch"].items():
        own = row.get("fp32")
        for key, ms in row.items():
            value = _ratio(base["batch"], ms)
            if value is not None:
                tables["speedups"].setdefault(target, {})[key] = value
            mine = _ratio(own, ms)
            if mine is not None:
                tables["speedups_vs_own_fp32"].setdefault(target, {})[key] = mine
    for target, row in latency["decode"].items():
        for key, ms in row.items():
            value = _ratio(base["decode"], ms)
            if value is not None:
                tables["decode_speedups"].setdefault(target, {})[key] = value
    cpu = facts["cpu"]
    memory = (facts.get("memory_mb") or {}).get("total")
    python = facts.get("python") or {}
    packages = {k: str(v) for k, v in (facts.get("packages") or {}).items() if v is not None}
    measured_on = MeasuredOn(
        cpu=cpu.get("name"),
        arch=cpu.get("arch"),
        features=list(cpu.get("features") or []),
        flags=str(cpu.get("flags") or ""),
        cores=facts.get("cores") or None,
        memory_mb=memory if isinstance(memory, int) and memory > 0 else None,
        os=facts.get("os"),
        python=python.get("version") if isinstance(python, dict) else None,
        packages=packages,
    )
    rounded = {
        shape: {t: {k: _significant(v, 5) for k, v in row.items()} for t, row in by_target.items()}
        for shape, by_target in latency.items()
        if by_target
    }
    return Calibration.model_validate(
        {
            "profile": profile.id,
            "date": date,
            "edgeport_version": __version__,
            "measured_on": measured_on,
            "method": method,
            **tables,
            "latency_ms": rounded,
            "skipped": skipped,
            "notes": notes,
        }
    )


def runtimes_to_measure(
    profile: DeviceProfile, device_packages: Mapping[str, Any], python: str, baseline: Recipe
) -> tuple[list[str], list[SkippedMeasurement]]:
    """The profile's runtimes to time (the `baseline` recipe's, always, first), and why the
    others are not: no reference graphs, not on the device, or this host cannot build them."""
    skipped: list[SkippedMeasurement] = []
    runtimes: list[str] = []
    for runtime in profile.runtimes:
        name = runtime.target
        if name not in BUILDABLE:
            reason = "edgeport has no reference graphs for it"
        elif device_packages.get(name) is None:
            reason = f"not installed on the device ({python}): pip install {name}"
        elif name == "openvino" and (missing := _host_lacks(["openvino", "nncf"])):
            reason = (
                f"this host cannot build its graphs ({', '.join(missing)} missing): "
                'pip install -c constraints.txt "edgeport[openvino]"'
            )
        else:
            runtimes.append(name)
            continue
        skipped.append(SkippedMeasurement(target=name, reason=reason))
    if baseline.target not in runtimes:
        runtimes.append(baseline.target)  # the baseline, even where the profile omits it
    runtimes.sort(key=lambda name: name != baseline.target)  # the baseline first
    return runtimes, skipped


def calibrate(
    profile: DeviceProfile,
    target: str,
    recipes: Sequence[Recipe],
    *,
    python: str,
    ssh_options: Sequence[str] = (),
    spec: GraphSpec | None = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    threads: int | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
    progress: Progress | None = None,
) -> Calibration:
    """Measure the profile's runtimes on the device at `target` (ssh://...), as speedups over
    the baseline recipe among `recipes` (the catalogue's)."""
    from edgeport import device
    from edgeport.catalog import find_baseline

    baseline = find_baseline(recipes)
    spec = spec or GraphSpec()
    progress = progress or _Quiet()
    ssh_target = device.parse_target(target)
    if not python or "\0" in python or "\n" in python:
        raise BadInputError(f"--python {python!r}: expected a command or path")
    for name, value, low in (
        ("--runs", runs, 1), ("--warmup", warmup, 0), ("--layers", spec.layers, 1),
        ("--hidden", spec.hidden, 16), ("--tokens", spec.tokens, 1),
    ):  # fmt: skip
        if value < low:
            raise BadInputError(f"{name} {value}: expected {low} or more")
    if spec.hidden % 16:
        raise BadInputError(f"--hidden {spec.hidden}: expected a multiple of 16")
    if threads is not None and threads < 1:
        raise BadInputError(f"--threads {threads}: expected 1 or more")
    device.ssh_executable()
    started = datetime.now(UTC).replace(microsecond=0)
    progress.stage(f"Probing {ssh_target}")
    raw, _ = device._call_agent(
        ssh_target,
        python,
        {"action": "probe", "modules": ["numpy", *RUNTIMES]},
        options=ssh_options,
        stdin=None,
        timeout_s=device.PROBE_TIMEOUT_S,
    )
    facts = device.device_facts(raw)
    check_calibration_device(profile, facts, str(ssh_target), python, baseline)

    runtimes, skipped = runtimes_to_measure(profile, facts["packages"], python, baseline)
    available = facts.get("cores") or profile.cpu.cores
    threads = threads or max(1, min(profile.cpu.cores, int(available)))

    with tempfile.TemporaryDirectory(prefix="edgeport-calibrate-") as tmp:
        folder = Path(tmp) / "graphs"
        folder.mkdir()
        progress.stage(f"Building reference graphs for {', '.join(runtimes)}: {spec.describe()}")
        built = build_reference_graphs(spec, folder, runtimes, recipes, profile, progress)
        shapes = {name: list(spec.shape(name)) for name in ("batch", "decode")}
        (folder / SPEC_FILE).write_text(
            json.dumps(
                {
                    "threads": threads,
                    "warmup": warmup,
                    "runs": runs,
                    "seed": spec.seed,
                    "flush_mb": FLUSH_MB,
                    "shapes": shapes,
                    # time_graphs.py times it first and last (drift), as the yardstick.
                    "baseline": list(calibration_entry(baseline)),
                    "graphs": [
                        {"target": g.target, "key": g.key, "file": g.file} for g in built.graphs
                    ],
                }
            ),
            encoding="utf-8",
        )
        from edgeport.runners import time_graphs

        shutil.copyfile(time_graphs.__file__, folder / SCRIPT)
        progress.stage(
            f"Timing {len(built.graphs)} graphs on {ssh_target} ({threads} threads, "
            f"{warmup} warm-up + {runs} runs per shape)"
        )
        report = _run_on_device(folder, Path(tmp), ssh_target, python, ssh_options, timeout_s)
    method = CalibrationMethod(
        graph=spec.describe(),
        layers=spec.layers,
        hidden=spec.hidden,
        shapes=shapes,
        threads=threads,
        warmup=warmup,
        runs=runs,
        seed=spec.seed,
        variants={f"{g.target}/{g.key}": g.how for g in built.graphs},
    )
    return calibration_from_timings(
        profile,
        facts,
        report.get("results") or [],
        method,
        [*skipped, *built.skipped],
        started,
        baseline,
        drift=report.get("drift") or {},
    )


# --------------------------------------------------------------------------- file


def default_out(profile_id: str) -> Path:
    return Path(CALIBRATIONS_FOLDER) / f"{profile_id}.yaml"


def check_destination(out: Path, force: bool) -> None:
    """Refuse before any work: an existing file without --force, a folder, no parent."""
    if out.is_dir():
        raise BadInputError(f"--out {out}: is a folder; give a .yaml file")
    if out.suffix not in {".yaml", ".yml"}:
        raise BadInputError(f"--out {out}: expected a .yaml file")
    if out.exists() and not force:
        raise BadInputError(f"{out} exists: pass --force to replace it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadInputError(f"--out {out}: {parent} is not a writable folder")


def calibration_yaml(calibration: Calibration, command: str = "") -> str:
    """The calibration as the YAML file to review: one number a line (a re-measurement's
    diff shows what changed), lists inline, and a header saying what it is."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def inline_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
        short = all(
            isinstance(item, int | float) or (isinstance(item, str) and len(item) <= 40)
            for item in data
        )
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=short)

    Dumper.add_representer(list, inline_list)
    data = calibration.model_dump(mode="json", exclude_none=True)
    header = [
        f"# Calibration of profile {calibration.profile}: speedups measured on "
        f"{calibration.measured_on.cpu or 'its device'}",
        f"# by edgeport {calibration.edgeport_version}" + (f": {command}" if command else "") + ".",
        "# speedups (a batch of tokens) and decode_speedups (one token) are over ONNX Runtime",
        "# fp32 on that device; `edgeport plan` uses them instead of the recipes' estimates.",
        "# Review it like a profile (is measured_on a device of the profile?); to change a",
        "# number, measure again: the tables must agree with latency_ms.",
    ]
    body = yaml.dump(
        data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
        width=100,
    )  # fmt: skip
    return "\n".join(header) + "\n" + body


def write_calibration(text: str, out: Path, force: bool) -> Path:
    """Write `text` at `out` whole or not at all; never replace a file without `force`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0)
        os.umask(mask)
        Path(partial).chmod(0o666 & ~mask)
        if force:
            Path(partial).replace(out)
        else:
            try:
                os.link(partial, out)  # fails if another process wrote it meanwhile
            except FileExistsError as exc:
                raise BadInputError(f"{out} exists: pass --force to replace it") from exc
    finally:
        Path(partial).unlink(missing_ok=True)
    return out


def table_rows(calibration: Calibration) -> list[tuple[str, ...]]:
    """runtime, key, batch ms, x ORT fp32, x own fp32, decode ms, decode x ORT fp32."""

    def fmt(value: float | None, unit: str = "") -> str:
        return "" if value is None else f"{value:.3g}{unit}"

    rows: list[tuple[str, ...]] = []
    batch = calibration.latency_ms.get("batch", {})
    decode = calibration.latency_ms.get("decode", {})
    for target, row in calibration.speedups.items():
        order = BUILDABLE.get(target, ())
        for key in sorted(row, key=lambda k: order.index(k) if k in order else len(order)):
            rows.append(
                (
                    target,
                    key,
                    fmt(batch.get(target, {}).get(key), " ms"),
                    fmt(row[key], "x"),
                    fmt(calibration.speedups_vs_own_fp32.get(target, {}).get(key), "x"),
                    fmt(decode.get(target, {}).get(key), " ms"),
                    fmt(calibration.decode_speedups.get(target, {}).get(key), "x"),
                )
            )
    return rows
