"""OpenVINO backend: optimum-intel export, openvino-tokenizers, NNCF compression and PTQ."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.backends import (
    Artifact,
    ExportedModel,
    Feeds,
    FunctionSession,
    PartSource,
    exported_parts,
)
from edgeport.backends.openvino_decoder import (
    OpenVinoDecoderSession,
    calibration_items,
    is_stateful_decoder,
)
from edgeport.backends.openvino_ir import fuse_sibling_projections, save_ir, untie_output_head
from edgeport.backends.openvino_padding import remove_padding
from edgeport.backends.padding import EXACT, QUANTISED, Agreement, remove_padding_checked
from edgeport.backends.weight_only import MIN_GROUP_SIZE, choose_group_size, search_patterns
from edgeport.errors import UnsupportedError
from edgeport.families import family_of
from edgeport.runners import ondevice
from edgeport.schemas import device_is_accelerator

if TYPE_CHECKING:
    import numpy as np

    from edgeport.schemas import Candidate, ModelInfo, Quantization

MODEL_FILE = "openvino_model.xml"
# int8-static models as NNCF returned them, weight quantisers still explicit, keyed by
# the saved IR: the sensitivity ranking needs them and saving folds them away.
_QUANTIZED_IN_MEMORY: dict[str, Any] = {}
WEIGHTS_FILE = "openvino_model.bin"
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin")
# Why the tokenizer could not be converted; written beside the export, read by build().
_TOKENIZER_NOTE = "tokenizer-note.txt"
DETOKENIZER_FILES = ("openvino_detokenizer.xml", "openvino_detokenizer.bin")

# Host-side checks run each model on a hundred input shapes (every length from 1 token to
# the maximum, every decoding step of a language model). OpenVINO's CPU plugin keeps the
# kernels of every shape it has seen, ~3 MB a shape for MiniLM, which made validation the
# peak of a conversion's memory. Bounded caches keep what one inference reuses (its
# layers share shapes): 65 lengths cost 37 MB instead of 200 and run ~10% slower, where
# no cache at all is 2.5x slower. oneDNN reads its setting once, when the CPU plugin
# loads, so it is set here, before any model is compiled; a user's own setting wins.
# Bundles keep OpenVINO's defaults: a device serving a few shapes wants them.
KERNEL_CACHE_SHAPES = 20  # CPU_RUNTIME_CACHE_CAPACITY: nodes' executors, per compiled model
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # oneDNN's, per process


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def _nncf() -> Any:
    """nncf, with its log sent to stderr: stdout belongs to `--json`."""
    import logging

    import nncf

    for handler in logging.getLogger("nncf").handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.__stderr__ or sys.stderr)  # type: ignore[attr-defined]
    return nncf


def _io_names(model: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    inputs = tuple(port.get_any_name() for port in model.inputs)
    outputs = tuple(port.get_any_name() for port in model.outputs)
    return inputs, outputs


def compile_config(device: str, threads: int) -> dict[str, Any]:
    """CPU settings for validation here; accelerators are emulated with their fp16 precision."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f16" if device_is_accelerator(device) else "f32",
        # Flush denormals: ~8% faster int8 encoders on x86; validated with it, so the
        # runners use it too.
        "CPU_DENORMALS_OPTIMIZATION": True,
        # Memory, not numbers: see KERNEL_CACHE_SHAPES.
        "CPU_RUNTIME_CACHE_CAPACITY": KERNEL_CACHE_SHAPES,
    }


class OpenVinoSession:
    def __init__(self, path: Path | Any, device: str, threads: int) -> None:
        """`path` is an IR file, or an already-read `openvino.Model`."""
        core = _core()
        model = core.read_model(str(path)) if isinstance(path, Path) else path
        self._compiled = core.compile_model(model, "CPU", compile_config(device, threads))
        self.input_names, self.output_names = _io_names(self._compiled)
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {name: feeds[name] for name in self.input_names}
        results = self._request.infer(wanted)
        # The request owns its output buffers and reuses them on the next call.
        return {
            name: results[port].copy()
            for name, port in zip(self.output_names, self._compiled.outputs, strict=True)
        }


def quantizers(model: Any, *, activations_only: bool = False) -> list[Any]:
    """FakeQuantize ops; on weights too while the model is in memory (saving folds those
    into int8 constants)."""
    return [
        op
        for op in model.get_ops()
        if op.get_type_name() == "FakeQuantize"
        and not (activations_only and op.input_value(0).get_node().get_type_name() == "Constant")
    ]


def bypass_quantizers(model: Any, names: set[str]) -> list[str]:
    """Remove the named quantisers: what they fed runs on float values."""
    removed = []
    for op in quantizers(model):
        if op.get_friendly_name() in names:
            op.output(0).replace(op.input_value(0))
            removed.append(op.get_friendly_name())
    return removed


def quantizers_by_matmul(model: Any, max_depth: int = 4) -> dict[str, set[str]]:
    """Each MatMul with the quantisers that feed it (through converts, reshapes, scales)."""
    groups: dict[str, set[str]] = {}
    for quantizer in quantizers(model):
        frontier = [quantizer]
        for _ in range(max_depth):
            found = False
            following = []
            for node in frontier:
                for output in node.outputs():
                    for target in output.get_target_inputs():
                        consumer = target.get_node()
                        if consumer.get_type_name() == "MatMul":
                            groups.setdefault(consumer.get_friendly_name(), set()).add(
                                quantizer.get_friendly_name()
                            )
                            found = True
                        else:
                            following.append(consumer)
            if found:
                break
            frontier = following
    return groups


def weight_input_channels(model: Any) -> list[int]:
    """Input channels (reduction axis) of every MatMul with a constant 2-D weight."""
    channels = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        transpose_b = bool(op.get_attributes().get("transpose_b", False))
        weight = op.input_value(1).get_node()
        # Weights may sit behind a Convert (fp16 storage) before the MatMul.
        while weight.get_type_name() == "Convert":
            weight = weight.input_value(0).get_node()
        if weight.get_type_name() != "Constant":
            continue
        shape = list(weight.get_output_shape(0))
        if len(shape) != 2:
            continue
        channels.append(int(shape[1] if transpose_b else shape[0]))
    return channels


def _weights_file(model_file: str) -> str:
    """The weights beside an IR graph: `openvino_model.xml` -> `openvino_model.bin`."""
    return f"{model_file.removesuffix('.xml')}.bin"


def _copy_tokenizer(source: Path, target: Path) -> tuple[str, ...]:
    copied: list[str] = []
    for group in (TOKENIZER_FILES, DETOKENIZER_FILES):
        if all((source / name).is_file() for name in group):
            for name in group:
                shutil.copy2(source / name, target / name)
            copied += group
    return tuple(copied) if set(TOKENIZER_FILES) <= set(copied) else ()


def _remove_padding(
    out: Path,
    device: str,
    calibration: Sequence[Feeds],
    max_length: int,
    *,
    fp16: bool,
    agreement: Agreement = EXACT,
) -> str:
    """Swap the saved model in `out` for its unpadded rewrite when the two agree at every
    real token (padding.py); returns the note that says which was kept, and why.

    Both graphs are read back from the files that ship and compiled with the settings
    validation and the bundle's runner use: a build-time check with other settings
    passed a graph that ran at cosine 0 on an AVX2 host (see
    docs/research/padding-removal-isa.md).
    """

    from edgeport.host import available_cores

    staging = out.parent / f"{out.name}-unpadded"

    def rewrite(path: Path) -> Path:
        unpadded = remove_padding(_core().read_model(str(path)))
        staging.mkdir(parents=True, exist_ok=True)
        save_ir(unpadded, staging / MODEL_FILE, compress_to_fp16=fp16)
        return staging / MODEL_FILE

    def compile_graph(path: Path) -> Callable[[Feeds], list[np.ndarray]]:
        session = OpenVinoSession(path, device, available_cores())
        return lambda feeds: list(session.run(feeds).values())

    shipped = out / MODEL_FILE
    try:
        chosen, note = remove_padding_checked(
            shipped, rewrite, compile_graph, calibration, max_length, agreement
        )
        if chosen != shipped:
            for name in (MODEL_FILE, WEIGHTS_FILE):
                (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return note


class OpenVinoBackend:
    target_id = "openvino"

    @staticmethod
    def host_devices() -> list[str]:
        """Device kinds the OpenVINO runtime sees here (imports openvino)."""
        # "GPU.0", "GPU.1" are instances of one device kind: the profile names the kind.
        return [str(name).split(".")[0] for name in _core().available_devices]

    def export(
        self,
        model: ModelInfo,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Sequence[PartSource] = (),
    ) -> ExportedModel:
        from optimum.exporters.openvino import main_export
        from optimum.intel import OVConfig

        out = workdir / "export"
        if parts and not parts[0].from_optimum:
            from edgeport.backends import torch_parts

            task_model = torch_parts.task_model(model, trust_remote_code=trust_remote_code)
            files = torch_parts.export_openvino(task_model, parts, out)
            graphs = [
                (part, file, _io_names(_core().read_model(str(out / file))))
                for part, file in zip(parts, files, strict=True)
            ]
            return exported_parts(self.target_id, out, graphs)
        try:
            # Tracing emits TracerWarnings by design; under `-W error` they would abort it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main_export(
                    model_name_or_path=str(model.local_path),
                    output=out,
                    task=model.task,
                    library_name="transformers",
                    ov_config=OVConfig(dtype="fp32"),  # no size-based int8 compression
                    trust_remote_code=trust_remote_code,
                    local_files_only=True,
                    convert_tokenizer=False,
                )
        except (KeyError, ValueError, NotImplementedError) as exc:
            raise UnsupportedError(
                f"optimum-intel cannot export {model.model_type} for {model.task} "
                f"to OpenVINO: {exc}"
            ) from exc
        if parts:
            graphs = []
            for part in parts:
                file = f"openvino_{part.name}_model.xml"
                if not (out / file).is_file():
                    raise UnsupportedError(
                        f"optimum-intel wrote no {file} for the {part.name} part"
                    )
                graphs.append((part, file, _io_names(_core().read_model(str(out / file)))))
            return exported_parts(self.target_id, out, graphs)
        if not (out / MODEL_FILE).is_file():
            raise UnsupportedError(f"optimum-intel wrote no {MODEL_FILE} for {model.display_name}")
        if family_of(model).reads_text:
            note = self._convert_tokenizer(model, out, trust_remote_code=trust_remote_code)
            if note:
                (out / _TOKENIZER_NOTE).write_text(note, encoding="utf-8")
        inputs, outputs = _io_names(_core().read_model(str(out / MODEL_FILE)))
        return ExportedModel(self.target_id, out, MODEL_FILE, inputs, outputs)

    @staticmethod
    def _convert_tokenizer(model: ModelInfo, out: Path, *, trust_remote_code: bool) -> str:
        """Tokenizer as OpenVINO IR for the runner; returns a note when it cannot be done."""
        try:
            from openvino_tokenizers import convert_tokenizer
            from transformers import AutoTokenizer

            hf_tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                str(model.local_path), trust_remote_code=trust_remote_code, local_files_only=True
            )
            if family_of(model).decodes:  # run.py streams text: it needs the detokenizer too
                tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
                save_ir(detokenizer, out / DETOKENIZER_FILES[0])
            else:
                tokenizer = convert_tokenizer(
                    hf_tokenizer, with_detokenizer=False, max_length=model.max_length
                )
            save_ir(tokenizer, out / TOKENIZER_FILES[0])
        except Exception as exc:  # any converter gap: the runner falls back to `tokenizers`
            return (
                f"tokenizer not converted to OpenVINO IR ({type(exc).__name__}: {exc}); "
                "run.py tokenises with the tokenizers library"
            )
        return ""

    def build(
        self,
        exported: ExportedModel,
        candidate: Candidate,
        model: ModelInfo,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> Artifact:

        quantization = candidate.recipe.quantize
        notes: list[str] = []
        excluded = quantization.exclude_nodes
        out = workdir / (f"out-{len(excluded)}-float" if excluded else "out")
        out.mkdir(parents=True, exist_ok=True)
        model_file, weights_file = exported.model_file, _weights_file(exported.model_file)
        ir = _core().read_model(str(exported.directory / exported.model_file))
        if is_stateful_decoder(ir):
            # Before compression, so each merged MatMul is compressed as one.
            merged = fuse_sibling_projections(ir)
            if merged:
                notes.append(f"{merged} groups of projections reading one input merged")
        family = family_of(model)
        unpad = candidate.recipe.graph.remove_padding and family.pads_tokens
        if unpad and device_is_accelerator(candidate.device):
            # GPU and NPU plugins want static shapes; the packed token count is not.
            notes.append(f"padding kept: removed on CPU only, not on {candidate.device}")
            unpad = False

        scheme = quantization.scheme
        # NNCF draws progress bars on stdout, which belongs to `--json`.
        with contextlib.redirect_stdout(sys.stderr):
            if scheme in {"none", "fp16"}:
                result = ir  # fp16 weights are compressed when saved below
            elif scheme == "int8-weight":
                result = self._compress_int8(ir, quantization)
                if family.decodes:
                    notes.append("embeddings and lm_head: int8_asym per channel, as every layer")
            elif scheme == "int4-weight":
                result, note = self._compress_int4(ir, quantization, calibration)
                notes += [note] if note else []
            elif scheme == "int8-static":
                transformer = quantization.model_type == "transformer" or (
                    quantization.model_type == "auto" and bool(model.dims.num_attention_heads)
                )
                ranked = quantization.mixed_precision and not excluded
                result = self._quantize_static(
                    ir,
                    quantization,
                    calibration,
                    exported.input_names,
                    fold_weights=not ranked,
                    transformer=transformer,
                )
                if ranked:
                    # One NNCF run, not two: the sensitivity ranking keeps this graph with
                    # its weight quantisers explicit, and the shipped graph is the same one
                    # with them folded into int8 constants, which is exactly what NNCF's
                    # own fold does after quantising (compress_quantize_weights).
                    from openvino._offline_transformations import (
                        compress_quantize_weights_transformation,
                    )

                    # Only the newest build can be ranked next: one graph is kept.
                    _QUANTIZED_IN_MEMORY.clear()
                    _QUANTIZED_IN_MEMORY[str(out / model_file)] = result
                    result = result.clone()
                    compress_quantize_weights_transformation(result)
                if excluded:
                    notes.append(f"kept in float (weights and activations): {', '.join(excluded)}")
            else:
                raise UnsupportedError(f"OpenVINO backend has no {scheme!r} quantisation")
        save_ir(result, out / model_file, compress_to_fp16=scheme == "fp16")
        if unpad:
            # Padding goes last, from the model as it ships: NNCF statically quantises
            # per tensor and calibrates on single texts, so quantising first changes
            # nothing, and the check then compares the shipped graph with its exact twin.
            notes.append(
                _remove_padding(
                    out,
                    candidate.device,
                    calibration,
                    model.max_length,
                    fp16=scheme == "fp16",
                    agreement=QUANTISED if scheme == "int8-static" else EXACT,
                )
            )

        files = [model_file, weights_file]
        tokenizer_files = _copy_tokenizer(exported.directory, out)
        files += tokenizer_files
        note_path = exported.directory / _TOKENIZER_NOTE
        if note_path.is_file():
            notes.append(note_path.read_text(encoding="utf-8"))
        if device_is_accelerator(candidate.device):
            notes.append(
                f"validated on this host's CPU with fp16 inference precision as "
                f"{candidate.device} would use; {candidate.device} not present here"
            )
        inputs, outputs = _io_names(result)
        return Artifact(
            directory=out,
            model_file=model_file,
            files=tuple(files),
            input_names=inputs,
            output_names=outputs,
            notes=tuple(notes),
        )

    def rank_sensitive_nodes(
        self, artifact: Artifact, probe: Callable[[Any], float], threads: int
    ) -> list[tuple[str, float]]:
        """Score each quantised MatMul alone (every other quantiser removed).

        Weights and activations both count: int8 weights alone cost a visible share of
        the error. Returns MatMul names, most harmful first; `quantize.exclude_nodes`
        takes these names, and the next build leaves them entirely in float.
        """
        core = _core()
        in_memory = _QUANTIZED_IN_MEMORY.pop(str(artifact.model_path), None)  # ranked once

        def fresh() -> Any:
            return (
                in_memory.clone()
                if in_memory is not None
                else core.read_model(str(artifact.model_path))
            )

        groups = quantizers_by_matmul(fresh())
        every: set[str] = set().union(*groups.values()) if groups else set()

        def score(model: Any) -> float:
            return probe(OpenVinoSession(model, "CPU", threads))

        # Compiling a variant (~0.35 s for MiniLM's, on one core) takes longer than probing
        # it, so two run at a time: one compiles while the other is probed (1.4x faster on
        # 2 cores). Each score is its own model's, whatever ran beside it. The graphs are
        # edited here, in order; only compiling and probing run in the workers.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgeport-rank") as pool:
            pending = []
            for matmul, group in sorted(groups.items()):
                model = fresh()
                bypass_quantizers(model, every - group)
                pending.append((matmul, pool.submit(score, model)))
            scores = [(matmul, future.result()) for matmul, future in pending]
        return sorted(scores, key=lambda item: item[1])

    def load(
        self, artifact: Artifact, device: str, threads: int
    ) -> OpenVinoSession | OpenVinoDecoderSession | FunctionSession:
        model = _core().read_model(str(artifact.model_path))
        inputs, _ = _io_names(model)
        if ondevice.is_seq2seq_decoder(inputs):
            compiled = _core().compile_model(model, device, compile_config(device, threads))
            run = ondevice.openvino_seq2seq_decoder(compiled)
            return FunctionSession(run, inputs, (ondevice.LOGITS,))
        if is_stateful_decoder(model):
            return OpenVinoDecoderSession(model, compile_config(device, threads))
        return OpenVinoSession(artifact.model_path, device, threads)

    # ----------------------------------------------------------------- steps

    @staticmethod
    def _ignored_scope(quantization: Quantization) -> Any:
        nncf = _nncf()

        if not quantization.ignored_patterns and not quantization.exclude_nodes:
            return None
        return nncf.IgnoredScope(
            names=list(quantization.exclude_nodes),
            patterns=list(quantization.ignored_patterns),
            validate=False,
        )

    def _compress_int8(self, ir: Any, quantization: Quantization) -> Any:
        nncf = _nncf()

        mode = (
            nncf.CompressWeightsMode.INT8_SYM
            if quantization.symmetric
            else nncf.CompressWeightsMode.INT8_ASYM
        )
        return nncf.compress_weights(ir, mode=mode, ignored_scope=self._ignored_scope(quantization))

    def _compress_int4(
        self, ir: Any, quantization: Quantization, calibration: Sequence[Feeds] = ()
    ) -> tuple[Any, str]:
        nncf = _nncf()
        from nncf.quantization.advanced_parameters import (
            AdvancedCompressionParameters,
            GroupSizeFallbackMode,
        )

        group_size, per_layer = choose_group_size(
            quantization.group_size, weight_input_channels(ir)
        )
        note = ""
        if per_layer:
            note = (
                f"int4 group size {group_size} does not divide every layer; "
                "NNCF adjusted the block size per layer"
            )
        elif quantization.group_size and group_size != quantization.group_size:
            note = f"int4 group size {quantization.group_size} -> {group_size} to fit every layer"
        mode = (
            nncf.CompressWeightsMode.INT4_SYM
            if quantization.symmetric
            else nncf.CompressWeightsMode.INT4_ASYM
        )
        keep = list(quantization.keep_int8_patterns)
        ignored = [*quantization.ignored_patterns, *search_patterns(keep)]
        # An int4 head (with int8 embeddings) is compressed in a pass of its own, with its
        # own group size: the first pass leaves it alone, and a tied head first gets
        # weights of its own (it shares them with the embedding lookup otherwise).
        head, tied = (
            untie_output_head(ir)
            if quantization.lm_head_precision == "int4" and not quantization.all_layers
            else (None, False)
        )
        data: dict[str, Any] = {}
        skipped = ""
        if quantization.algorithm == "gptq":
            items = calibration_items(ir, calibration) if is_stateful_decoder(ir) else []
            if items:
                data = {"dataset": nncf.Dataset(items), "subset_size": len(items), "gptq": True}
            else:
                skipped = "GPTQ skipped (needs calibration texts and a KV-cache decoder); RTN"
        advanced = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
            min_adjusted_group_size=MIN_GROUP_SIZE,
        )
        compressed = nncf.compress_weights(
            ir,
            mode=mode,
            group_size=group_size,
            ratio=quantization.ratio if quantization.ratio is not None else 1.0,
            all_layers=quantization.all_layers,
            ignored_scope=(
                nncf.IgnoredScope(patterns=ignored, names=[head] if head else [], validate=False)
                if ignored or head
                else None
            ),
            backup_mode=nncf.BackupMode.INT8_ASYM,
            advanced_parameters=advanced,
            **data,
        )
        details = [
            f"int4 {'sym' if quantization.symmetric else 'asym'} group {group_size}"
            f"{' with GPTQ on ' + str(data['subset_size']) + ' calibration texts' if data else ''}",
            "embeddings and lm_head: int4"
            if quantization.all_layers
            else "embeddings int8_asym per channel"
            if head
            else "embeddings and lm_head: int8_asym per channel (NNCF backup mode)",
        ]
        if head:
            head_group = quantization.lm_head_group_size or group_size
            symmetric = quantization.head_symmetric
            # Every other MatMul is compressed by now, or left float for the int8 pass
            # below by the same patterns, so this pass reaches only the head.
            compressed = nncf.compress_weights(
                compressed,
                mode=nncf.CompressWeightsMode.INT4_SYM
                if symmetric
                else nncf.CompressWeightsMode.INT4_ASYM,
                group_size=head_group,
                ratio=1.0,
                all_layers=True,
                ignored_scope=nncf.IgnoredScope(patterns=ignored, types=["Gather"], validate=False),
                advanced_parameters=advanced,
                **data,
            )
            details.append(
                f"lm_head int4 {'sym' if symmetric else 'asym'} group {head_group}"
                f"{' with GPTQ' if data else ''}"
                f"{' (untied from the embeddings)' if tied else ''}"
            )
        if keep:
            # IgnoredScope leaves the matched weights fp32; a second pass makes them int8
            # (weights compressed by the first pass are left alone).
            compressed = nncf.compress_weights(compressed, mode=nncf.CompressWeightsMode.INT8_ASYM)
            details.append(f"kept at int8_asym: {', '.join(keep)}")
        note = "; ".join([*([note] if note else []), *([skipped] if skipped else []), *details])
        return compressed, note

    def _quantize_static(
        self,
        ir: Any,
        quantization: Quantization,
        calibration: Sequence[Feeds],
        input_names: Sequence[str],
        *,
        fold_weights: bool = True,
        transformer: bool = True,
    ) -> Any:
        nncf = _nncf()
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        if not calibration:
            raise UnsupportedError("static int8 needs calibration samples")
        names = list(input_names)

        def transform(feeds: Feeds) -> dict[str, Any]:
            return {name: feeds[name] for name in names if name in feeds}

        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        options: dict[str, Any] = {}
        if quantization.smooth_quant_alpha is not None:
            # SmoothQuant moves activation outliers into the weights, where int8 copes.
            options["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(
                matmul=quantization.smooth_quant_alpha
            )
        if quantization.calibration_method == "minmax":
            # Embedding outliers on short inputs fall outside percentile-clipped ranges.
            options["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
        if not fold_weights:
            from nncf.openvino.quantization.backend_parameters import BackendParameters

            # Keep weight quantisers explicit so the sensitivity ranking can remove them.
            options["backend_params"] = {BackendParameters.COMPRESS_WEIGHTS: False}
        advanced = AdvancedQuantizationParameters(**options) if options else None
        return nncf.quantize(
            ir,
            nncf.Dataset(list(calibration), transform),
            # Transformer: attention and norm patterns NNCF keeps in float; a convolutional
            # network has none, and NNCF's default places quantisers for it.
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration),
            ignored_scope=self._ignored_scope(quantization),
            advanced_parameters=advanced,
        )
