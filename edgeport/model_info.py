"""Inspect a resolved model folder: task, family, size and shapes, without loading weights.

Parameter counts and dtypes come from the safetensors headers (a few KB read per file,
edgeport.model_shape), so planning a 7B model reads no weights; the headers may come
from the Hub without the files (hub.resolve_metadata). Checking that transformers and
optimum's ONNX exporter know the model_type reads their name tables, not their code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.families import family_for_task, normalise_task
from edgeport.hub import PICKLE_WEIGHT_SUFFIXES, ResolvedModel, read_config, read_json_file
from edgeport.model_shape import (
    ModelShape,
    model_dims,
    model_shape,
    read_safetensors_header,
    text_config,
)
from edgeport.schemas import ModelInfo


def header_map(folder: Path) -> dict[str, dict[str, Any]]:
    """The safetensors headers of a model folder's weight files, by file name."""
    return {
        path.name: read_safetensors_header(path) for path in sorted(folder.glob("*.safetensors"))
    }


def pickle_shape(folder: Path, config: dict[str, Any]) -> ModelShape:
    """Pickle weights (only with --allow-pickle) have no header: their size estimates
    the parameters, at fp32."""
    pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES]
    size = sum(p.stat().st_size for p in pickles)
    shape = model_shape(config, {})
    return replace(
        shape,
        parameters_total=size // 4,
        parameters_active=size // 4,
        stored_bytes=size,
        dtype="F32",
        from_headers=False,
    )


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


def _is_image_backbone(files: frozenset[str]) -> bool:
    """A backbone that reads pixels: an image processor beside it and no tokenizer."""
    has_tokenizer = bool({"tokenizer.json", "vocab.txt"} & files)
    return "preprocessor_config.json" in files and not has_tokenizer


def folder_files(folder: Path) -> list[str]:
    """Every file of a model folder, as paths relative to it."""
    return sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    )


def infer_task(folder: Path, config: dict[str, Any], files: Sequence[str] | None = None) -> str:
    """The optimum task of a model, from its files (`files`: the repository's list, when
    the folder holds only what planning downloaded) and config.json architectures."""
    names = frozenset(files if files is not None else folder_files(folder))
    if "modules.json" in names:
        return "feature-extraction"  # a sentence-transformers model
    for architecture in config.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_TASKS:
            if str(architecture).endswith(suffix):
                if task == "feature-extraction" and _is_image_backbone(names):
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


# Model types named (when supported) as examples in the unsupported-model_type message.
_EXAMPLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "llama", "qwen2", "gpt2")


@functools.cache
def transformers_model_types() -> frozenset[str]:
    """Every model_type this transformers knows: the keys of CONFIG_MAPPING_NAMES in its
    configuration_auto.py, read as source. Importing that module costs seconds of every
    `edgeport plan`; tests/test_model_info.py holds this reading to the imported table."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")  # the package only, not its modules
    if spec is None or spec.origin is None:
        return frozenset()
    source = Path(spec.origin).parent / "models" / "auto" / "configuration_auto.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(
                isinstance(t, ast.Name) and t.id == "CONFIG_MAPPING_NAMES" for t in node.targets
            )
            and isinstance(node.value, ast.Call)
            and node.value.args
            and isinstance(node.value.args[0], ast.List)
        ):
            return frozenset(
                str(item.elts[0].value)
                for item in node.value.args[0].elts
                if isinstance(item, ast.Tuple)
                and item.elts
                and isinstance(item.elts[0], ast.Constant)
            )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES.keys())  # a layout this reading does not know


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


def inspect_model(
    resolved: ResolvedModel,
    task: str | None = None,
    *,
    files: Sequence[str] | None = None,
    shape: ModelShape | None = None,
) -> ModelInfo:
    """Everything the planner needs to know about a model, without loading its weights.

    `files` (the repository's file list) and `shape` (counted from headers read from the
    Hub) describe a model whose folder holds only the metadata files planning downloads;
    without them both come from the folder.
    """
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
    files = sorted(files) if files is not None else folder_files(folder)
    chosen_task = normalise_task(task or infer_task(folder, config, files))
    family = family_for_task(chosen_task)
    if config.get("is_encoder_decoder") and not family.encoder_decoder:
        raise UnsupportedError(f"encoder-decoder models are not supported for {chosen_task}")
    if shape is None:
        headers = header_map(folder)
        shape = model_shape(config, headers) if headers else pickle_shape(folder, config)
    family_fields = family.inspect(folder, config, chosen_task)
    # Two-tower models keep their dimensions in sub-configs: the family says which count.
    dims = family_fields.pop("dims", None) or model_dims(text_config(config))
    max_length = family_fields.pop("max_length", None) or dims.max_positions or 512
    if dims.max_positions:
        max_length = min(max_length, dims.max_positions)
    # What one token reads matters to generators only; for them MoE and towers count.
    active = shape.parameters_active if family.decodes else shape.parameters_total

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
        parameter_count=shape.parameters_total,
        parameters_active=active if active != shape.parameters_total else None,
        experts=shape.experts,
        weight_dtype=shape.dtype,
        weight_bytes=shape.stored_bytes,
        files=files,
        dims=dims,
        max_length=int(max_length),
        **family_fields,
    )
