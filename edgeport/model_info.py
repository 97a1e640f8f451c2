"""Inspect a resolved model folder: task, family, size and shapes, without loading weights.

Parameter counts and dtypes come from the safetensors headers (a few KB read per file),
so planning a 7B model takes milliseconds and needs no torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.hub import PICKLE_WEIGHT_SUFFIXES, ResolvedModel
from edgeport.schemas import Family, ModelDims, ModelInfo

# Tasks edgeport can validate, mapped to the architecture family they belong to.
# The names are optimum's task names, so `--task` accepts what optimum-cli accepts.
SUPPORTED_TASKS: dict[str, Family] = {
    "feature-extraction": "encoder",
    "sentence-similarity": "encoder",
    "text-classification": "encoder",
    "token-classification": "encoder",
    "fill-mask": "encoder",
    "text-generation-with-past": "decoder",
}
TASK_ALIASES = {
    "sentence-similarity": "feature-extraction",
    "text-generation": "text-generation-with-past",
}
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
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise BadInputError(f"{path.name}: implausible safetensors header")
        header: dict[str, Any] = json.loads(handle.read(length))
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
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            params += count
            size += count * _DTYPE_BYTES.get(entry["dtype"], 4)
            dtype_counts[entry["dtype"]] = dtype_counts.get(entry["dtype"], 0) + count
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
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForImageClassification", "image-classification"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForAudioClassification", "audio-classification"),
    ("ForObjectDetection", "object-detection"),
    ("Model", "feature-extraction"),
)


def infer_task(folder: Path, config: dict[str, Any]) -> str:
    if (folder / "modules.json").is_file():
        return "feature-extraction"  # a sentence-transformers model
    for architecture in config.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_TASKS:
            if str(architecture).endswith(suffix):
                return task
    raise UnsupportedError("cannot infer the task from config.json architectures; pass --task")


def normalise_task(task: str) -> str:
    task = TASK_ALIASES.get(task, task)
    if task not in SUPPORTED_TASKS:
        supported = ", ".join(sorted(t for t in SUPPORTED_TASKS if t not in TASK_ALIASES))
        raise UnsupportedError(f"task {task!r} is not supported yet (supported: {supported})")
    return task


def _sentence_transformers_settings(folder: Path) -> tuple[str | None, bool, int | None]:
    """Pooling mode, normalisation and max length from a sentence-transformers layout."""
    pooling: str | None = None
    normalize = False
    max_length: int | None = None
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        for module in modules:
            kind = str(module.get("type", ""))
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                pooling_config = folder / str(module.get("path", "")) / "config.json"
                if pooling_config.is_file():
                    settings = json.loads(pooling_config.read_text(encoding="utf-8"))
                    if settings.get("pooling_mode_cls_token"):
                        pooling = "cls"
                    elif settings.get("pooling_mode_max_tokens"):
                        pooling = "max"
                    elif settings.get("pooling_mode_mean_tokens"):
                        pooling = "mean"
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
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


def inspect_model(resolved: ResolvedModel, task: str | None = None) -> ModelInfo:
    folder = resolved.local_path
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if not model_type:
        raise UnsupportedError(f"{folder}/config.json has no model_type")
    chosen_task = normalise_task(task or infer_task(folder, config))
    family = SUPPORTED_TASKS[chosen_task]
    if config.get("is_encoder_decoder"):
        raise UnsupportedError("encoder-decoder models are not supported yet")
    params, weight_bytes, dtype = count_weights(folder)
    dims = _dims(config)

    pooling, normalize, st_max_length = _sentence_transformers_settings(folder)
    if chosen_task == "feature-extraction" and pooling is None:
        pooling = "mean"  # the usual choice for encoders without a pooling config
    max_length = st_max_length or dims.max_positions or 512
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
        family=family,
        model_type=str(model_type),
        architectures=list(config.get("architectures") or []),
        parameter_count=params,
        weight_dtype=dtype,
        weight_bytes=weight_bytes,
        files=files,
        dims=dims,
        pooling=pooling or "none",
        normalize_embeddings=normalize,
        max_length=int(max_length),
    )
