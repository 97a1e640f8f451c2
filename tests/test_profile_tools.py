"""`edgeport profiles validate | schema | detect`: what a profile pull request relies on."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgeport.catalog import load_catalog
from edgeport.cli import app
from edgeport.profile_tools import render_json_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "schemas" / "device-profile.schema.json"
runner = CliRunner()

Cli = Callable[..., subprocess.CompletedProcess[str]]

VALID: dict[str, Any] = {
    "id": "board",
    "name": "Test board",
    "source": "made up for a test",
    "cpu": {"arch": "arm64", "cores": 4, "features": ["neon", "dotprod"]},
    "memory_mb": 2048,
    "runtimes": [{"target": "onnxruntime", "devices": ["CPUExecutionProvider"]}],
}


def _write(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _validate(*paths: Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["profiles", "validate", *map(str, paths)])
    return result.exit_code, result.output.strip().splitlines()


def test_the_builtin_catalogue_validates_with_a_one_line_summary() -> None:
    code, lines = _validate(REPO / "profiles")
    assert code == 0
    assert len(lines) == 1
    assert lines[0].startswith(f"OK: {len(load_catalog().profiles)} profiles valid")


def test_editing_a_builtin_profile_is_not_a_duplicate() -> None:
    code, lines = _validate(REPO / "profiles" / "raspberry-pi-4.yaml")
    assert code == 0, lines
    assert lines == ["OK: 1 profile valid (raspberry-pi-4)"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "red"}, "board.yaml: colour: unknown key"),
        (
            {"cpu": {**VALID["cpu"], "cores": "four"}},
            "board.yaml: cpu.cores: Input should be a valid integer",
        ),
        ({"memory_mb": -1024}, "board.yaml: memory_mb: Input should be greater than 0"),
        (
            {"runtimes": [{"target": "tflite", "devices": ["CPU"]}]},
            "board.yaml: runtimes.0.target: unknown runtime 'tflite'",
        ),
        (
            {"runtimes": [{"target": "openvino", "devices": ["CUDAExecutionProvider"]}]},
            "board.yaml: runtimes.0.devices: 'CUDAExecutionProvider' is not a device of openvino",
        ),
        ({"id": "other-board"}, "board.yaml: id: 'other-board' must match the file name 'board'"),
        (
            {"cpu": {**VALID["cpu"], "features": ["neon", "avx2"]}},
            "board.yaml: cpu.features.1: 'avx2' is not a feature of arm64 CPUs",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "negative-ram",
        "unknown-runtime",
        "unknown-device",
        "id-not-file-name",
        "foreign-isa",
    ],
)
def test_each_problem_names_file_field_and_reason(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = _write(tmp_path / "board.yaml", {**VALID, **change})
    code, lines = _validate(path)
    assert code == 2
    assert any(expected in line for line in lines), lines
    assert lines[-1].startswith("1 problem in 1 file")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "board.yaml", "id: board\ncpu: {arch: arm64\nmemory_mb: 1\n")
    code, lines = _validate(path)
    assert code == 2
    assert "board.yaml: malformed YAML (line" in lines[0]


def test_every_problem_in_every_file_is_reported_at_once(tmp_path: Path) -> None:
    first = _write(tmp_path / "board.yaml", {**VALID, "colour": "red", "memory_mb": 0})
    second = _write(tmp_path / "other.yaml", {**VALID, "id": "other", "cpu": {"arch": "riscv"}})
    good = _write(tmp_path / "good.yaml", {**VALID, "id": "good"})
    code, lines = _validate(first, second, good)
    assert code == 2
    problems = lines[:-1]
    assert sum("board.yaml" in line for line in problems) == 2
    assert sum("other.yaml" in line for line in problems) >= 2  # arch and cores
    assert not any("good.yaml" in line for line in problems)


def test_duplicate_ids_across_files_and_vs_the_builtin_catalogue(tmp_path: Path) -> None:
    one = _write(tmp_path / "a" / "board.yaml", VALID)
    two = _write(tmp_path / "b" / "board.yaml", VALID)
    code, lines = _validate(one, two)
    assert code == 2
    assert any(line.startswith(f"{two}: id: 'board' is also the id of {one}") for line in lines)

    shadow = _write(tmp_path / "raspberry-pi-4.yaml", {**VALID, "id": "raspberry-pi-4"})
    code, lines = _validate(shadow)
    assert code == 2
    assert "'raspberry-pi-4' is already the built-in profile" in lines[0]


def test_exit_code_two_from_the_command_line(tmp_path: Path, cli: Cli) -> None:
    path = _write(tmp_path / "board.yaml", {**VALID, "memory_mb": -1})
    result = cli("profiles", "validate", str(path))
    assert result.returncode == 2
    assert "memory_mb" in result.stderr


def test_a_binary_file_is_one_problem_and_the_folder_is_still_checked(
    tmp_path: Path, cli: Cli
) -> None:
    (tmp_path / "a-photo.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (tmp_path / "b-empty.yml").write_bytes(b"")
    _write(tmp_path / "c-board.yaml", {**VALID, "id": "c-board"})
    _write(tmp_path / "d-board.yaml", {**VALID, "id": "d-board", "cpu": {"arch": "riscv"}})
    result = cli("profiles", "validate", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[0]
        == f"{tmp_path / 'a-photo.yaml'}: not UTF-8 text (byte 0, line 1); is this the right file?"
    )
    assert lines[1].startswith(f"{tmp_path / 'b-empty.yml'}: expected a mapping")
    assert all("d-board.yaml" in line for line in lines[2:-1]) and len(lines) > 3
    assert not any("c-board.yaml" in line for line in lines)
    assert lines[-1] == f"{len(lines) - 1} problems in 4 file(s)"


def test_id_may_be_left_out_and_then_is_the_file_name(tmp_path: Path) -> None:
    data = {key: value for key, value in VALID.items() if key != "id"}
    path = _write(tmp_path / "my-board.yaml", data)
    assert _validate(path) == (0, ["OK: 1 profile valid (my-board)"])
    assert load_catalog().profile(str(path)).id == "my-board"

    bad_name = _write(tmp_path / "My Board.yaml", data)
    code, lines = _validate(bad_name)
    assert code == 2
    assert "id:" in lines[0] and "rename the file" in lines[0]


def test_schema_file_in_the_repository_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_json_schema(), (
        "the DeviceProfile model changed: run "
        "`edgeport profiles schema --out schemas/device-profile.schema.json`"
    )


def test_schema_command_prints_or_writes_it(tmp_path: Path) -> None:
    printed = runner.invoke(app, ["profiles", "schema"])
    assert printed.exit_code == 0
    assert json.loads(printed.stdout)["additionalProperties"] is False
    out = tmp_path / "schema.json"
    written = runner.invoke(app, ["profiles", "schema", "--out", str(out)])
    assert written.exit_code == 0
    assert out.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")


def test_schema_accepts_the_catalogue_and_rejects_a_typo() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    for path in sorted((REPO / "profiles").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**VALID, "memroy_mb": 1}, schema)


def test_detect_then_validate_as_a_user_would(tmp_path: Path, cli: Cli) -> None:
    detected = cli("profiles", "detect")
    assert detected.returncode == 0, detected.stderr
    assert detected.stdout.startswith("# Device profile probed by `edgeport profiles detect`")
    (tmp_path / "my.yaml").write_text(detected.stdout, encoding="utf-8")
    validated = cli("profiles", "validate", "my.yaml", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "OK: 1 profile valid (my)" in validated.stderr
    profile = load_catalog().profile(str(tmp_path / "my.yaml"))
    assert profile.memory_mb > 0 and profile.runtimes


def test_detect_with_an_id_writes_it(cli: Cli) -> None:
    detected = runner.invoke(app, ["profiles", "detect", "--id", "lab-box"])
    assert detected.exit_code == 0
    assert yaml.safe_load(detected.stdout)["id"] == "lab-box"
    bad = cli("profiles", "detect", "--id", "Lab Box")
    assert bad.returncode == 2
    assert "--id" in bad.stderr
