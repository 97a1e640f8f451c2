"""Inspect a resolved model folder: task, family, size and shapes, without loading weights.

Parameter counts and dtypes come from the safetensors headers (a few KB read per file),
so planning a 7B model reads no weights. Checking that transformers and optimum's ONNX
exporter know the model_type imports both (and torch) once per process: a few seconds.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.families import family_for_task, normalise_task
from edgeport.hub import PICKLE_WEIGHT_SUFFIXES, ResolvedModel, read_config, read_json_file
from edgeport.schemas import ModelDims, ModelInfo

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; anything else is a one-line BadInputError."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise BadInputError(f"{path}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:
                raise BadInputError(f"{path}: implausible safetensors header")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from exc
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise BadInputError(f"{path}: not a safetensors file (malformed header)") from exc
    if not isinstance(header, dict):
        raise BadInputError(f"{path}: not a safetensors file (malformed header)")
    return header


def count_weights(folder: Path) -> tuple[int, int, str]:
    """(parameter count, bytes, dominant dtype) of the model's weights."""
    params = 0
    size = 0
    dtype_counts: dict[str, int] = {}
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        for name, entry in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            try:
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                dtype = str(entry["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadInputError(f"{path}: malformed safetensors header entry") from exc
            params += count
            size += count * _DTYPE_BYTES.get(dtype, 4)
            dtype_counts[dtype] = dtype_counts.get(dtype, 0) + count
    if not files:
        # Pickle weights (only when --allow-pickle): estimate from the file size.
        pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES]
        size = sum(p.stat().st_size for p in pickles)
        return size // 4, size, "F32"
    dominant = max(dtype_counts, key=lambda key: dtype_counts[key]) if dtype_counts else "F32"
    return params, size, dominant


# Architecture class suffix -> optimum task. Checked in order; the bare `Model` suffix
# (a backbone without a head, as sentence-transformers ship) means feature extraction.
_ARCHITECTURE_TASKS: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "text-generation-with-past"),
    ("LMHeadModel", "text-generation-with-past"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForQuestionAnswering", "question-answering"),
    ("WhisperForConditionalGeneration", "automatic-speech-recognition"),
    ("MoonshineForConditionalGeneration", "automatic-speech-recognition"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("MarianMTModel", "text2text-generation"),
    ("ForImageClassification", "image-classification"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForAudioClassification", "audio-classification"),
    ("ForObjectDetection", "object-detection"),
    # Two towers trained to agree (CLIP, SigLIP): their use is zero-shot classification.
    ("CLIPModel", "zero-shot-image-classification"),
    ("SiglipModel", "zero-shot-image-classification"),
    ("Model", "feature-extraction"),
)


def _is_image_backbone(folder: Path, config: dict[str, Any]) -> bool:
    """A backbone that reads pixels: an image processor beside it and no tokenizer."""
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt"))
    return (folder / "preprocessor_config.json").is_file() and not has_tokenizer


def infer_task(folder: Path, config: dict[str, Any]) -> str:
    if (folder / "modules.json").is_file():
        return "feature-extraction"  # a sentence-transformers model
    for architecture in config.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_TASKS:
            if str(architecture).endswith(suffix):
                if task == "feature-extraction" and _is_image_backbone(folder, config):
                    return "image-feature-extraction"
                return task
    raise UnsupportedError("cannot infer the task from config.json architectures; pass --task")


def config_labels(folder: Path) -> dict[str, str]:
    """id2label of config.json as strings: what run.py prints for a class index."""
    labels = read_config(folder).get("id2label") or {}
    if not isinstance(labels, dict):
        raise BadInputError(f"{folder / 'config.json'}: id2label: expected an object")
    return {str(key): str(value) for key, value in labels.items()}


def _json_object(path: Path) -> dict[str, Any]:
    """An optional JSON object file of the model folder: {} when absent."""
    if not path.is_file():
        return {}
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a JSON object")
    return data


def sentence_transformers_settings(folder: Path) -> tuple[str | None, bool, int | None]:
    """Pooling mode, normalisation and max length from a sentence-transformers layout."""
    pooling: str | None = None
    normalize = False
    max_length: int | None = None
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = read_json_file(modules_path)
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise BadInputError(f"{modules_path}: expected a JSON list of objects")
        for module in modules:
            kind = str(module.get("type", ""))
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                settings = _json_object(folder / str(module.get("path", "")) / "config.json")
                if settings.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif settings.get("pooling_mode_max_tokens"):
                    pooling = "max"
                elif settings.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
    value = _json_object(folder / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        max_length = value
    return pooling, normalize, max_length


def _dims(config: dict[str, Any]) -> ModelDims:
    def first(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int):
                return value
        return None

    heads = first("num_attention_heads", "n_head", "num_heads")
    hidden = first("hidden_size", "n_embd", "d_model", "dim")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    return ModelDims(
        hidden_size=hidden,
        num_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        num_attention_heads=heads,
        num_key_value_heads=first("num_key_value_heads", "multi_query_group_num") or heads,
        head_dim=head_dim,
        vocab_size=first("vocab_size"),
        max_positions=first("max_position_embeddings", "n_positions", "max_seq_len"),
    )


# Model types named (when supported) as examples in the unsupported-model_type message.
_EXAMPLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "llama", "qwen2", "gpt2")


@functools.cache
def transformers_model_types() -> frozenset[str]:
    """Every model_type this transformers knows, from its name table (no torch import)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES.keys())


@functools.cache
def onnx_model_types() -> frozenset[str]:
    """Every model_type optimum's ONNX exporter registers a config for.

    Read from the decorators in optimum's model_configs.py (`@register_tasks_manager_onnx(
    "bert", ...)`) rather than by importing it: the import pulls in torch, seconds that
    `edgeport plan` would otherwise spend before answering. tests/test_model_info.py holds
    this reading to TasksManager's own table.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("optimum.exporters.onnx.model_configs")
    if spec is None or spec.origin is None:
        return frozenset()
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "register_tasks_manager_onnx"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return frozenset(names)


def _examples(known: frozenset[str]) -> str:
    return ", ".join(name for name in _EXAMPLE_MODEL_TYPES if name in known)


def check_model_type(model_type: str, config_path: Path, *, remote_code: bool = False) -> None:
    """UnsupportedError unless transformers knows `model_type` and optimum can export it.

    Without this, an unknown type passes `plan` and fails `convert` deep in the exporter.
    A model with its own code (`remote_code`: config.json auto_map, already consented to
    by hub.check_safety) defines its config class itself, so only the exporter is asked.
    """
    from edgeport.catalog import echo

    known = transformers_model_types()
    if model_type not in known and not remote_code:
        import transformers

        raise UnsupportedError(
            f"{config_path}: model_type {echo(model_type)} is not a model type transformers "
            f"{transformers.__version__} knows ({len(known)} known, e.g. {_examples(known)})"
        )
    exportable = onnx_model_types()
    # optimum registers some types with '-' (deberta-v2), some with '_' (gpt_bigcode).
    spellings = {model_type, model_type.replace("_", "-"), model_type.replace("-", "_")}
    if not spellings & exportable:
        raise UnsupportedError(
            f"{config_path}: model_type {echo(model_type)} has no ONNX export config in "
            f"optimum ({len(exportable)} model types have one, e.g. {_examples(exportable)})"
        )


def inspect_model(resolved: ResolvedModel, task: str | None = None) -> ModelInfo:
    folder = resolved.local_path
    config_path = folder / "config.json"
    config = read_config(folder)
    model_type = config.get("model_type")
    if not model_type:
        raise UnsupportedError(f"{config_path} has no model_type")
    if not isinstance(model_type, str):
        raise BadInputError(f"{config_path}: model_type: expected a string")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise BadInputError(f"{config_path}: architectures: expected a list of class names")
    check_model_type(model_type, config_path, remote_code=bool(config.get("auto_map")))
    chosen_task = normalise_task(task or infer_task(folder, config))
    family = family_for_task(chosen_task)
    if config.get("is_encoder_decoder") and not family.encoder_decoder:
        raise UnsupportedError(f"encoder-decoder models are not supported for {chosen_task}")
    params, weight_bytes, dtype = count_weights(folder)
    family_fields = family.inspect(folder, config, chosen_task)
    # Two-tower models keep their dimensions in sub-configs: the family says which count.
    dims = family_fields.pop("dims", None) or _dims(config)
    max_length = family_fields.pop("max_length", None) or dims.max_positions or 512
    if dims.max_positions:
        max_length = min(max_length, dims.max_positions)

    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    return ModelInfo(
        source=resolved.source,
        repo_id=resolved.repo_id,
        revision=resolved.revision,
        commit=resolved.commit,
        local_path=folder,
        task=chosen_task,
        family=family.id,
        model_type=str(model_type),
        architectures=list(architectures),
        parameter_count=params,
        weight_dtype=dtype,
        weight_bytes=weight_bytes,
        files=files,
        dims=dims,
        max_length=int(max_length),
        **family_fields,
    )
