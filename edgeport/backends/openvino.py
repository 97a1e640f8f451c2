"""OpenVINO backend: optimum-intel export, openvino-tokenizers, NNCF compression and PTQ."""

from __future__ import annotations

import contextlib
import shutil
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.backends import Artifact, ExportedModel, Feeds
from edgeport.errors import UnsupportedError
from edgeport.schemas import device_is_accelerator

if TYPE_CHECKING:
    import numpy as np

    from edgeport.schemas import Candidate, ModelInfo, Quantization

MODEL_FILE = "openvino_model.xml"
WEIGHTS_FILE = "openvino_model.bin"
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin")
# Why the tokenizer could not be converted; written beside the export, read by build().
_TOKENIZER_NOTE = "tokenizer-note.txt"
# Smallest int4 block we accept before handing odd layers to NNCF's per-layer fallback.
MIN_GROUP_SIZE = 16


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
    }


class OpenVinoSession:
    def __init__(self, path: Path, device: str, threads: int) -> None:
        core = _core()
        self._compiled = core.compile_model(
            core.read_model(str(path)), "CPU", compile_config(device, threads)
        )
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


def choose_group_size(
    requested: int | None, channels: Iterable[int], minimum: int = MIN_GROUP_SIZE
) -> tuple[int, bool]:
    """The largest block size <= requested (halving) that divides every layer's channels.

    Returns (group_size, per_layer_fallback). When no block size of at least `minimum`
    divides every layer (hidden 688 = 16 x 43 with a requested 128, say), the requested
    size is kept and NNCF adjusts the layers it does not divide one by one. A request of
    None or -1 means per-channel scales, which always fit.
    """
    if requested is None or requested <= 0:
        return -1, False
    sizes = [c for c in channels if c > 0]
    size = requested
    while size >= minimum:
        if all(c % size == 0 for c in sizes):
            return size, False
        size //= 2
    return requested, True


def _copy_tokenizer(source: Path, target: Path) -> tuple[str, ...]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return tuple(copied) if len(copied) == len(TOKENIZER_FILES) else ()


class OpenVinoBackend:
    target_id = "openvino"

    def export(self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool) -> ExportedModel:
        from optimum.exporters.openvino import main_export
        from optimum.intel import OVConfig

        out = workdir / "export"
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
        if not (out / MODEL_FILE).is_file():
            raise UnsupportedError(f"optimum-intel wrote no {MODEL_FILE} for {model.display_name}")
        note = self._convert_tokenizer(model, out, trust_remote_code=trust_remote_code)
        if note:
            (out / _TOKENIZER_NOTE).write_text(note, encoding="utf-8")
        inputs, outputs = _io_names(_core().read_model(str(out / MODEL_FILE)))
        return ExportedModel(self.target_id, out, MODEL_FILE, inputs, outputs)

    @staticmethod
    def _convert_tokenizer(model: ModelInfo, out: Path, *, trust_remote_code: bool) -> str:
        """Tokenizer as OpenVINO IR for the runner; returns a note when it cannot be done."""
        try:
            import openvino as ov
            from openvino_tokenizers import convert_tokenizer
            from transformers import AutoTokenizer

            hf_tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                str(model.local_path), trust_remote_code=trust_remote_code, local_files_only=True
            )
            tokenizer = convert_tokenizer(
                hf_tokenizer, with_detokenizer=False, max_length=model.max_length
            )
            ov.save_model(tokenizer, str(out / TOKENIZER_FILES[0]))
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
        import openvino as ov

        quantization = candidate.recipe.quantize
        notes: list[str] = []
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        ir = _core().read_model(str(exported.directory / exported.model_file))

        scheme = quantization.scheme
        # NNCF draws progress bars on stdout, which belongs to `--json`.
        with contextlib.redirect_stdout(sys.stderr):
            if scheme in {"none", "fp16"}:
                result = ir  # fp16 weights are compressed when saved below
            elif scheme == "int8-weight":
                result = self._compress_int8(ir, quantization)
            elif scheme == "int4-weight":
                result, note = self._compress_int4(ir, quantization)
                notes += [note] if note else []
            elif scheme == "int8-static":
                result = self._quantize_static(ir, quantization, calibration, exported.input_names)
            else:
                raise UnsupportedError(f"OpenVINO backend has no {scheme!r} quantisation")
        ov.save_model(result, str(out / MODEL_FILE), compress_to_fp16=scheme == "fp16")

        files = [MODEL_FILE, WEIGHTS_FILE]
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
            model_file=MODEL_FILE,
            files=tuple(files),
            input_names=inputs,
            output_names=outputs,
            notes=tuple(notes),
        )

    def load(self, artifact: Artifact, device: str, threads: int) -> OpenVinoSession:
        return OpenVinoSession(artifact.model_path, device, threads)

    # ----------------------------------------------------------------- steps

    @staticmethod
    def _ignored_scope(quantization: Quantization) -> Any:
        nncf = _nncf()

        if not quantization.ignored_patterns:
            return None
        return nncf.IgnoredScope(patterns=list(quantization.ignored_patterns), validate=False)

    def _compress_int8(self, ir: Any, quantization: Quantization) -> Any:
        nncf = _nncf()

        mode = (
            nncf.CompressWeightsMode.INT8_SYM
            if quantization.symmetric
            else nncf.CompressWeightsMode.INT8_ASYM
        )
        return nncf.compress_weights(ir, mode=mode, ignored_scope=self._ignored_scope(quantization))

    def _compress_int4(self, ir: Any, quantization: Quantization) -> tuple[Any, str]:
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
        compressed = nncf.compress_weights(
            ir,
            mode=mode,
            group_size=group_size,
            ratio=quantization.ratio if quantization.ratio is not None else 1.0,
            all_layers=quantization.all_layers,
            ignored_scope=self._ignored_scope(quantization),
            advanced_parameters=AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                min_adjusted_group_size=MIN_GROUP_SIZE,
            ),
        )
        return compressed, note

    def _quantize_static(
        self,
        ir: Any,
        quantization: Quantization,
        calibration: Sequence[Feeds],
        input_names: Sequence[str],
    ) -> Any:
        nncf = _nncf()
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        if not calibration:
            raise UnsupportedError("static int8 needs calibration samples")
        names = list(input_names)

        def transform(feeds: Feeds) -> dict[str, Any]:
            return {name: feeds[name] for name in names if name in feeds}

        advanced = None
        if quantization.smooth_quant_alpha is not None:
            advanced = AdvancedQuantizationParameters(
                smooth_quant_alpha=quantization.smooth_quant_alpha
            )
        return nncf.quantize(
            ir,
            nncf.Dataset(list(calibration), transform),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration),
            ignored_scope=self._ignored_scope(quantization),
            advanced_parameters=advanced,
        )
