"""Hostile or mistaken YAML: one line, exit 2, at once; never a hang or a huge message.

Every YAML file edgeport reads (catalogues, user profiles, build files) goes through
catalog.read_yaml_file, so these cases are checked on profiles; test_build.py checks
that build files take the same road.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from edgeport.catalog import (
    MAX_YAML_BYTES,
    Catalog,
    echo,
    load_catalog,
    parse_yaml,
    read_yaml_file,
    shorten,
)
from edgeport.errors import BadInputError, CatalogError

PROFILE = (
    "name: Board\nsource: a test\nmemory_mb: 2048\n"
    "runtimes: [{target: onnxruntime, devices: [CPUExecutionProvider]}]\n"
)


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: 9 levels of 9 aliases, 9^9 strings once expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _bomb_profile(folder: Path) -> Path:
    path = folder / "bomb.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(billion_laughs() + PROFILE + "cpu:\n  cores: 4\n  arch: *a8\n")
    return path


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[:2000]
    assert len(lines[0]) < 400
    return lines[0]


def test_alias_bomb_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    path = _bomb_profile(tmp_path)
    started = time.perf_counter()
    with pytest.raises(CatalogError) as caught:
        Catalog().profile(str(path))
    assert time.perf_counter() - started < 0.5
    message = str(caught.value)
    assert message.startswith(f"{path}: malformed YAML (line ")
    assert "aliases expand to more than 1000 values" in message
    assert "\n" not in message and "lol" not in message


@pytest.mark.parametrize(
    "command",
    [
        ["profiles", "show", "{bomb}"],
        ["profiles", "validate", "{bomb}"],
        ["plan", "org/model", "--profile", "{bomb}"],
        ["convert", "org/model", "--profile", "{bomb}", "--out", "{out}"],
        ["profiles", "list", "--profiles-dir", "{folder}"],
    ],
)
def test_alias_bomb_is_one_line_and_exit_2_from_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    bomb = _bomb_profile(tmp_path / "profiles")
    args = [part.format(bomb=bomb, out=tmp_path / "out", folder=bomb.parent) for part in command]
    started = time.monotonic()
    result = run_cli(*args)
    assert time.monotonic() - started < 60  # it used to run past 180 s and 5.5 GB
    assert result.returncode == 2, result.stderr[:2000]
    if command[1] == "validate":  # one line per problem, then the summary
        problem, summary = result.stderr.strip().splitlines()
        assert summary == "1 problem in 1 file(s)"
    else:
        problem = _one_line(result.stderr)
    assert problem.endswith(
        "bomb.yaml: malformed YAML (line 4, column 10): aliases expand to more than 1000 values"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [1, *a]\n", "an alias refers to the value that contains it"),
        ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 64 deep"),
        ("a: *" + "x" * 5000 + "\n", "found undefined alias"),
        ("a: " + "1" * 6000 + "\n", "digits"),
        ("a: \x00\n", "unacceptable character #x0000"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
    ],
)
def test_malformed_yaml_is_one_short_line(text: str, problem: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CatalogError) as caught:
        parse_yaml(text, Path("board.yaml"))
    assert time.perf_counter() - started < 1
    message = str(caught.value)
    assert message.startswith("board.yaml: malformed YAML")
    assert problem in message
    assert "\n" not in message and len(message) < 250


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text(
        "name: Board\nsource: a test\nmemory_mb: 2048\ncpu: {arch: x86_64, cores: 4}\n"
        "_devices: &cpu [CPUExecutionProvider]\n"
        "runtimes:\n  - {target: onnxruntime, devices: *cpu}\n"
    )
    data = read_yaml_file(path)
    assert data == yaml.safe_load(path.read_text())


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1) + PROFILE)
    with pytest.raises(CatalogError, match=r"board.yaml: larger than 1 MiB"):
        read_yaml_file(path)


def test_a_binary_profile_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "board.yaml").write_bytes(b"name: Board\n\xff\xfe\x00\x89PNG")
    with pytest.raises(BadInputError, match=r"board.yaml: not UTF-8 text \(byte 12, line 2\)"):
        load_catalog([folder])
    for args in (
        ["profiles", "list", "--profiles-dir", str(folder)],
        ["profiles", "show", str(folder / "board.yaml")],
    ):
        result = run_cli(*args)
        assert result.returncode == 2
        assert "board.yaml: not UTF-8 text" in _one_line(result.stderr)


def test_user_values_in_validation_messages_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    huge_key = "k" * 1000  # YAML's longest plain key
    path.write_text(PROFILE + f"cpu: {{cores: 4, arch: {'Q' * 100_000}}}\n{huge_key}: 1\n")
    result = run_cli("profiles", "validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3  # arch, the unknown key, the summary
    assert all(len(line) < 300 for line in lines)
    assert "cpu.arch: Input should be" in lines[0] and "QQQ" in lines[0]
    assert lines[1].endswith("…: unknown key")


def test_shorten_and_echo_give_one_bounded_line() -> None:
    assert shorten("short") == "short"
    assert shorten("a\nb\r\nc") == "a b c"
    cut = shorten("x" * 1000)
    assert len(cut) == 80 and cut.endswith("…")
    assert echo("line\nbreak") == "'line\\nbreak'"
    nested: list[object] = [["y" * 1000] * 1000] * 1000
    assert len(echo(nested)) <= 80
