"""Inspecting a model folder: what `plan` and `convert` refuse up front, in one line.

A model_type that transformers or optimum's ONNX exporter does not know is unsupported
(exit 4) before anything runs; a config.json that is not a JSON object is bad input (exit 2).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.hub import resolve
from edgeport.model_info import (
    check_model_type,
    inspect_model,
    onnx_model_types,
    transformers_model_types,
)


def _variant(
    tiny_bert: Path, tmp_path: Path, change: Callable[[dict[str, Any]], object] | bytes
) -> Path:
    """A copy of tiny_bert whose config.json is changed (a function) or replaced (bytes)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    config_path = folder / "config.json"
    if isinstance(change, bytes):
        config_path.write_bytes(change)
    else:
        config = json.loads(config_path.read_text())
        change(config)
        config_path.write_text(json.dumps(config))
    return folder


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("==>")]
    assert len(lines) == 1, stderr[:3000]
    return lines[0]


@pytest.mark.parametrize("command", ["plan", "convert"])
def test_an_unknown_model_type_is_unsupported_in_one_line(
    tiny_bert: Path, tmp_path: Path, command: str
) -> None:
    folder = _variant(tiny_bert, tmp_path, lambda c: c.update(model_type="not-a-real-model"))
    out = tmp_path / "bundle"
    extra = ["--out", str(out)] if command == "convert" else []
    result = run_cli(command, str(folder), "--profile", "x86-64-avx2", *extra)
    assert result.returncode == 4
    line = _one_line(result.stderr)
    assert line.startswith(f"error: {folder / 'config.json'}: model_type 'not-a-real-model' is not")
    assert "known, e.g. bert" in line and len(line) < 300
    assert result.stdout == "" and not out.exists()


def test_a_type_transformers_knows_but_optimum_cannot_export(
    tiny_bert: Path, tmp_path: Path
) -> None:
    no_onnx = sorted(transformers_model_types() - onnx_model_types())
    assert no_onnx, "every transformers model type has an ONNX config?"
    folder = _variant(tiny_bert, tmp_path, lambda c: c.update(model_type=no_onnx[0]))
    with pytest.raises(UnsupportedError) as caught:
        inspect_model(resolve(str(folder)))
    message = str(caught.value)
    assert f"model_type {no_onnx[0]!r} has no ONNX export config in optimum" in message
    assert "model types have one, e.g. bert" in message


def test_remote_code_is_asked_of_the_exporter_only() -> None:
    config = Path("config.json")
    with pytest.raises(UnsupportedError, match="not a model type transformers"):
        check_model_type("my-custom-model", config)
    with pytest.raises(UnsupportedError, match="no ONNX export config"):
        check_model_type("my-custom-model", config, remote_code=True)
    for known in ("bert", "llama", "gpt2", "qwen2"):
        check_model_type(known, config)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"model_type": "bert",', "malformed JSON: Expecting property name"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b"\x89PNG\r\n\x1a\n\xff", "not UTF-8 text (byte 0, line 1)"),
        (b"[" * 100_000, "malformed JSON"),
        (b'{"model_type": ["bert"]}', "model_type: expected a string"),
        (b'{"model_type": "bert", "architectures": 7}', "architectures: expected a list"),
    ],
    ids=["truncated", "list", "binary", "deep", "type-list", "architectures"],
)
def test_a_malformed_config_is_bad_input(
    tiny_bert: Path, tmp_path: Path, content: bytes, expected: str
) -> None:
    folder = _variant(tiny_bert, tmp_path, content)
    with pytest.raises(BadInputError) as caught:
        inspect_model(resolve(str(folder)))
    message = str(caught.value)
    assert message.startswith(f"{folder.resolve() / 'config.json'}: {expected}")
    assert "\n" not in message and len(message) < 300


def test_plan_on_a_binary_config_exits_2(tiny_bert: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_bert, tmp_path, b"\xff\xfe\x00\x00")
    result = run_cli("plan", str(folder), "--profile", "x86-64-avx2")
    assert result.returncode == 2
    assert _one_line(result.stderr) == (
        f"error: {folder / 'config.json'}: not UTF-8 text (byte 0, line 1); is this the right file?"
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("model.safetensors", b"\x01\x02", "not a safetensors file (too short)"),
        ("model.safetensors", b"\x10" + b"\x00" * 7 + b"not json here!!!", "malformed header"),
        ("modules.json", b'{"not": "a list"}', "expected a JSON list of objects"),
        ("sentence_bert_config.json", b"\xff", "not UTF-8 text"),
    ],
)
def test_malformed_side_files_are_bad_input(
    tiny_bert: Path, tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    folder = _variant(tiny_bert, tmp_path, lambda c: None)
    (folder / name).write_bytes(content)
    with pytest.raises(BadInputError) as caught:
        inspect_model(resolve(str(folder)))
    assert str(caught.value).startswith(str(folder.resolve() / name))
    assert expected in str(caught.value)


def test_onnx_model_types_read_from_source_match_optimums_table() -> None:
    import optimum.exporters.onnx.model_configs  # noqa: F401 - fills the table
    from optimum.exporters.tasks import TasksManager

    table = {name for name, e in TasksManager._SUPPORTED_MODEL_TYPE.items() if "onnx" in e}
    assert table <= onnx_model_types()


def test_the_model_types_read_from_source_are_transformers_own_table() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert transformers_model_types() == frozenset(CONFIG_MAPPING_NAMES)
