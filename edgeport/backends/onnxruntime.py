"""ONNX Runtime backend: optimum-onnx export, ORT transformer fusion and quantisation."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from edgeport.backends.onnxruntime_decoder import (
    FUSION_TOLERANCE,
    OnnxDecoderSession,
    fuse_attention,
    fused_attention_error,
    graph_input_names,
    has_kv_cache,
    quantize_weight_only,
)
from edgeport.backends.onnxruntime_padding import remove_padding
from edgeport.backends.padding import DYNAMIC, QUANTISED, remove_padding_checked
from edgeport.errors import UnsupportedError
from edgeport.families import family_of
from edgeport.runners import ondevice
from edgeport.schemas import device_is_accelerator
from edgeport.text_inputs import right_pad

if TYPE_CHECKING:
    import numpy as np

    from edgeport.schemas import Candidate, ModelInfo, Quantization

MODEL_FILE = "model.onnx"
# The files optimum's exporter writes for the components of an encoder-decoder: the
# merged decoder runs the first step and the cached ones (an If on use_cache_branch).
OPTIMUM_PARTS = {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}
OPTIMUM_UNUSED = ("decoder_model", "decoder_with_past_model")
# onnxruntime.transformers.optimizer knows these encoder layouts as "bert".
_FUSION_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "mpnet": "bert",
    "ernie": "bert",
}
# Fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference; telling the
# quantiser that untyped tensors are float lets it quantise the MatMuls around them.
_QUANT_EXTRA_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # TensorProto.FLOAT


def session_options(threads: int) -> Any:
    """ONNX Runtime's default graph optimisations (ORT_ENABLE_ALL), as the bundle's run.py
    and verify.py get them on the device: what is validated and timed here is what runs
    there, and the fp32 baseline is ONNX Runtime as its users run it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class OnnxSession:
    """A graph from a file, or serialised in memory (the sensitivity ranking's variants)."""

    def __init__(self, path: Path | bytes, threads: int) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {name: feeds[name] for name in self.input_names}
        results = self._session.run(None, wanted)
        return dict(zip(self.output_names, results, strict=True))


class _CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over pre-tokenised batches."""

    def __init__(self, feeds: Sequence[Feeds], input_names: Sequence[str]) -> None:
        self._feeds = [{name: batch[name] for name in input_names} for batch in feeds]
        self._iterator: Iterator[Feeds] = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)


def _compile(path: Path) -> Callable[[Feeds], list[np.ndarray]]:
    """A session with the runtime's own settings, reused for every check input."""
    import numpy as np

    from edgeport.host import available_cores

    session = OnnxSession(path, threads=available_cores())
    return lambda feeds: [np.asarray(v) for v in session.run(feeds).values()]


def _model_files(directory: Path, model_file: str = MODEL_FILE) -> tuple[str, ...]:
    """The graph and its external-data files (`model.onnx`, `model.onnx.data`)."""
    return tuple(sorted(p.name for p in directory.iterdir() if p.name.startswith(model_file)))


def _io_names(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(i.name for i in model.graph.input if i.name not in initializers)
    return inputs, tuple(o.name for o in model.graph.output)


INT8_CONSTANT_MIN_ELEMENTS = 4096


def _int8_constants(path: Path) -> str:
    """Every float32 initializer of at least INT8_CONSTANT_MIN_ELEMENTS values and two or
    more dimensions that quantisation left in float becomes int8 with one symmetric scale
    per slice of its first axis, and a DequantizeLinear that gives back its name (the
    value subgraphs read from the outer scope too). ONNX Runtime folds the dequantisation
    when the session loads."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept: list[Any] = []
    nodes: list[Any] = []
    saved = 0
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype != np.float32 or array.ndim < 2 or array.size < INT8_CONSTANT_MIN_ELEMENTS:
            kept.append(initializer)
            continue
        rows = array.reshape(array.shape[0], -1)
        scale = np.maximum(np.abs(rows).max(axis=1), 1e-12).astype(np.float32) / 127.0
        shape = (-1,) + (1,) * (array.ndim - 1)
        quantised = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
        name = initializer.name
        kept += [
            numpy_helper.from_array(quantised, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_int8_scale"),
            numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_int8_zero"),
        ]
        nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero"],
                [name],
                name=f"{name}_DequantizeLinear",
                axis=0,
            )
        )
        saved += array.size * 3
    if not nodes:
        return "no other large float constants"
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    _save(model, path)
    return f"{len(nodes)} other float constants stored as int8 per row ({saved / 1e6:.2f} MB less)"


def _save(model: Any, path: Path) -> None:
    import onnx

    # Protobuf caps a single file at 2 GB; larger models keep weights beside the graph.
    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data" if large else None,
    )


class OnnxRuntimeBackend:
    target_id = "onnxruntime"

    @staticmethod
    def host_devices() -> list[str]:
        """Execution providers this onnxruntime build offers here (imports onnxruntime)."""
        import onnxruntime

        return [str(name) for name in onnxruntime.get_available_providers()]

    def export(
        self,
        model: ModelInfo,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Sequence[PartSource] = (),
    ) -> ExportedModel:
        from optimum.exporters.onnx import main_export

        out = workdir / "export"
        if parts and not parts[0].from_optimum:
            from edgeport.backends import torch_parts

            task_model = torch_parts.task_model(model, trust_remote_code=trust_remote_code)
            files = torch_parts.export_onnx(task_model, parts, out)
            graphs = [(p, f, _io_names(out / f)) for p, f in zip(parts, files, strict=True)]
            return exported_parts(self.target_id, out, graphs)
        try:
            # Tracing emits TracerWarnings by design (attention masks, KV caches); under
            # `-W error` they would abort the export.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main_export(
                    str(model.local_path),
                    out,
                    task=model.task,
                    library_name="transformers",
                    do_validation=False,  # edgeport validates on realistic inputs instead
                    trust_remote_code=trust_remote_code,
                    local_files_only=True,
                )
        except (KeyError, ValueError, NotImplementedError) as exc:
            raise UnsupportedError(
                f"optimum cannot export {model.model_type} for {model.task} to ONNX: {exc}"
            ) from exc
        if parts:
            return self._optimum_parts(out, parts)
        inputs, outputs = _io_names(out / MODEL_FILE)
        return ExportedModel(self.target_id, out, MODEL_FILE, inputs, outputs)

    def _optimum_parts(self, out: Path, parts: Sequence[PartSource]) -> ExportedModel:
        """optimum's encoder and merged decoder as parts; its unmerged decoders (the same
        weights twice more) are deleted."""
        for name in OPTIMUM_UNUSED:
            for path in out.glob(f"{name}.onnx*"):
                path.unlink()
        graphs = []
        for part in parts:
            file = OPTIMUM_PARTS.get(part.name, f"{part.name}_model.onnx")
            if not (out / file).is_file():
                raise UnsupportedError(f"optimum wrote no {file} for the {part.name} part")
            graphs.append((part, file, _io_names(out / file)))
        return exported_parts(self.target_id, out, graphs)

    def build(
        self,
        exported: ExportedModel,
        candidate: Candidate,
        model: ModelInfo,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> Artifact:
        recipe = candidate.recipe
        workdir.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        source = exported.directory / exported.model_file

        family = family_of(model)
        if recipe.graph.transformer_fusion and family.decodes:
            source, fusion_note = self._fuse_decoder(source, workdir / "fused.onnx", calibration)
            notes.append(fusion_note)
        elif recipe.graph.transformer_fusion:
            fused = workdir / "fused.onnx"
            if self._fuse(source, fused, model):
                source = fused
            else:
                notes.append(f"no ORT transformer fusion for model type {model.model_type!r}")
        padded, padding_note = source, ""
        if recipe.graph.remove_padding and family.pads_tokens:
            if device_is_accelerator(candidate.device):
                # Execution providers for accelerators compile static shapes.
                padding_note = f"padding kept: removed on CPU only, not on {candidate.device}"
            else:
                source, padding_note = self._remove_padding(
                    source, workdir / "unpadded.onnx", calibration, model.max_length
                )

        target = workdir / "out" / exported.model_file
        target.parent.mkdir(parents=True, exist_ok=True)
        quantization = recipe.quantize
        converted = self._convert(source, target, quantization, calibration, workdir)
        if source != padded and quantization.scheme != "none":
            padding_note = self._check_converted(
                target, padded, quantization, calibration, workdir, model
            )
        notes += [padding_note] if padding_note else []
        notes += converted

        inputs, outputs = _io_names(target)
        return Artifact(
            directory=target.parent,
            model_file=target.name,
            files=_model_files(target.parent, target.name),
            input_names=inputs,
            output_names=outputs,
            notes=tuple(notes),
        )

    def _convert(
        self,
        source: Path,
        target: Path,
        quantization: Quantization,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> list[str]:
        """`source` in the recipe's precision, saved as `target`; returns notes."""
        scheme = quantization.scheme
        if scheme == "none":
            self._copy_model(source, target)
        elif scheme == "fp16":
            self._to_fp16(source, target, quantization)
        elif scheme == "int8-dynamic":
            self._quantize_dynamic(source, target, quantization)
            if quantization.int8_constants:
                return [_int8_constants(target)]
        elif scheme == "int8-static":
            self._quantize_static(source, target, quantization, calibration, workdir)
        elif scheme in {"int4-weight", "int8-weight"}:
            return self._quantize_weight_only(source, target, quantization)
        else:
            raise UnsupportedError(f"ONNX Runtime backend has no {scheme!r} quantisation yet")
        return []

    def _check_converted(
        self,
        target: Path,
        padded: Path,
        quantization: Quantization,
        calibration: Sequence[Feeds],
        workdir: Path,
        model: ModelInfo,
    ) -> str:
        """The float rewrite was checked exact; this checks the graph that ships, after
        quantisation, against the same quantisation of the padded graph, and ships that
        twin instead when they disagree. Dynamic int8 scales activations per tensor, so
        on a padded batch the twin's scales also see the padding and only texts alone
        can be compared (DYNAMIC)."""
        twin = workdir / "padded" / MODEL_FILE
        twin.parent.mkdir(parents=True, exist_ok=True)
        self._convert(padded, twin, quantization, calibration, twin.parent)
        agreement = DYNAMIC if quantization.scheme == "int8-dynamic" else QUANTISED
        chosen, note = remove_padding_checked(
            twin, lambda _: target, _compile, calibration, model.max_length, agreement
        )
        if chosen == twin:
            for path in target.parent.iterdir():
                path.unlink()
            self._copy_model(twin, target)
        return note

    def load(
        self, artifact: Artifact, device: str, threads: int
    ) -> OnnxSession | OnnxDecoderSession | FunctionSession:
        names = graph_input_names(artifact.model_path)
        if ondevice.is_seq2seq_decoder(names):
            import onnxruntime as ort

            session = ort.InferenceSession(
                str(artifact.model_path),
                session_options(threads),
                providers=["CPUExecutionProvider"],
            )
            run = ondevice.onnxruntime_seq2seq_decoder(session)
            return FunctionSession(run, names, (ondevice.LOGITS,))
        if has_kv_cache(names):
            return OnnxDecoderSession(artifact.model_path, session_options(threads))
        return OnnxSession(artifact.model_path, threads)

    def rank_sensitive_nodes(
        self, artifact: Artifact, probe: Callable[[Any], float], threads: int
    ) -> list[tuple[str, float]]:
        """Score each quantised Conv/MatMul/Gemm of a QDQ model alone (every other QDQ
        pair bypassed), most harmful first; `quantize.exclude_nodes` takes these names
        (onnxruntime_sensitivity.py). Empty for models without QDQ pairs."""
        from edgeport.backends.onnxruntime_sensitivity import rank_sensitive_nodes

        return rank_sensitive_nodes(
            artifact.model_path, probe, lambda model: OnnxSession(model, threads)
        )

    # ------------------------------------------------- decoder (language model) steps

    @staticmethod
    def _fuse_decoder(source: Path, target: Path, calibration: Sequence[Feeds]) -> tuple[Path, str]:
        """Attention as GroupQueryAttention, kept only when it matches the unfused graph."""
        import json

        import onnx

        config_path = source.parent / "config.json"
        if not config_path.is_file():
            return source, "attention not fused: no config.json beside the export"
        model = onnx.load(str(source))
        note = fuse_attention(model, json.loads(config_path.read_text(encoding="utf-8")))
        if not note.startswith("attention:"):
            return source, note
        _save(model, target)
        del model
        error = fused_attention_error(source, target, list(calibration)[:2])
        if error > FUSION_TOLERANCE:
            return source, (
                f"attention not fused: GroupQueryAttention differs from the original graph "
                f"by {error:.1e} of the logits' range (tolerance {FUSION_TOLERANCE:.0e})"
            )
        return target, f"{note}; checked against the unfused graph: {error:.1e} relative"

    @staticmethod
    def _quantize_weight_only(source: Path, target: Path, quantization: Quantization) -> list[str]:
        """MatMulNBits int4/int8 weights for KV-cache decoders (onnxruntime_decoder.py)."""
        model, notes = quantize_weight_only(source, quantization)
        _save(model, target)
        return notes

    # ----------------------------------------------------------------- steps

    @staticmethod
    def _copy_model(source: Path, target: Path) -> None:
        for path in source.parent.iterdir():
            if path.name.startswith(source.name):
                shutil.copy2(path, target.parent / path.name.replace(source.name, target.name))

    @staticmethod
    def _remove_padding(
        source: Path, target: Path, calibration: Sequence[Feeds], max_length: int
    ) -> tuple[Path, str]:
        def rewrite(path: Path) -> Path:
            import onnx

            _save(remove_padding(onnx.load(str(path))), target)
            return target

        return remove_padding_checked(source, rewrite, _compile, calibration, max_length)

    @staticmethod
    def _fuse(source: Path, target: Path, model: ModelInfo) -> bool:
        fusion_type = _FUSION_MODEL_TYPES.get(model.model_type)
        if fusion_type is None or not family_of(model).pads_tokens:
            return False
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(source),
            model_type=fusion_type,
            num_heads=model.dims.num_attention_heads or 0,
            hidden_size=model.dims.hidden_size or 0,
            opt_level=0,  # fusions only; ORT applies its own passes when it loads the model
            use_gpu=False,
        )
        optimized.save_model_to_file(str(target))
        return True

    @staticmethod
    def _to_fp16(source: Path, target: Path, quantization: Quantization) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(source))
        if any(node.op_type == "If" for node in model.graph.node):
            # Its outputs of If branches come out dangling (seen with ORT 1.31's converter
            # on optimum's merged decoders): refused rather than shipped broken.
            raise UnsupportedError(
                "ONNX Runtime's fp16 converter breaks graphs with If branches (a merged "
                "KV-cache decoder)"
            )
        converted = convert_float_to_float16(model, keep_io_types=quantization.keep_io_float)
        _save(converted, target)

    @staticmethod
    def _quant_types(quantization: Quantization) -> tuple[Any, Any]:
        from onnxruntime.quantization import QuantType

        kinds = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        return kinds[quantization.weight_type], kinds[quantization.activation_type]

    def _quantize_dynamic(self, source: Path, target: Path, quantization: Quantization) -> None:
        from onnxruntime.quantization import quantize_dynamic

        weight_type, _ = self._quant_types(quantization)
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=quantization.op_types,
            nodes_to_exclude=list(quantization.exclude_nodes) or None,
            per_channel=quantization.per_channel,
            reduce_range=quantization.reduce_range,
            weight_type=weight_type,
            # The MatMuls of a merged seq2seq decoder sit inside its If branches, which
            # the quantiser skips unless told (it documents this for dynamic mode only).
            extra_options={**_QUANT_EXTRA_OPTIONS, "EnableSubgraph": True},
        )

    def _quantize_static(
        self,
        source: Path,
        target: Path,
        quantization: Quantization,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if not calibration:
            raise UnsupportedError("static int8 needs calibration samples")
        if quantization.calibration_method != "minmax" and all(
            "attention_mask" in feeds for feeds in calibration
        ):
            # ORT's histogram calibrators stack every sample's activations into one
            # array: the texts must share one width.
            calibration = right_pad(calibration)
        prepared = workdir / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        inputs, _ = _io_names(prepared)
        weight_type, activation_type = self._quant_types(quantization)
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        quantize_static(
            str(prepared),
            str(target),
            _CalibrationReader(calibration, inputs),
            quant_format=QuantFormat.QDQ if quantization.format == "QDQ" else QuantFormat.QOperator,
            op_types_to_quantize=quantization.op_types,
            nodes_to_exclude=list(quantization.exclude_nodes) or None,
            per_channel=quantization.per_channel,
            reduce_range=quantization.reduce_range,
            activation_type=activation_type,
            weight_type=weight_type,
            calibrate_method=methods[quantization.calibration_method],
            extra_options=_QUANT_EXTRA_OPTIONS,
        )
