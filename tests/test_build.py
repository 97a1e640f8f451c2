"""`edgeport build`: models x profiles from a YAML file, export reuse, index, exit code."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MINILM, build_tiny_bert, needs_minilm, run_cli

from edgeport.build import (
    BuildFile,
    ModelEntry,
    build_exit_code,
    check_build,
    load_build_file,
    run_build,
)
from edgeport.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "build.yaml"
PROFILES = {path.stem: path for path in (REPO / "profiles").glob("*.yaml")}


def test_example_build_file_is_valid() -> None:
    build = load_build_file(EXAMPLE)
    assert len(build.pairs()) == len(build.models) * len(build.profiles)
    assert build.out == EXAMPLE.parent / ".." / "bundles"  # relative to the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{id: a/b}]\nprofiles: [x]\nprofile: [y]\n", "profile"),
        ("models: [{id: a/b, revison: main}]\nprofiles: [x]\n", "revison"),
        ("models: []\nprofiles: [x]\n", "models"),
        ("models: [{id: a/b}, {id: c/b}]\nprofiles: [x]\n", "same bundle"),
        ("models: [{id: a/b\n", "YAML"),
    ],
)
def test_build_file_is_validated(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message):
        load_build_file(path)
    result = run_cli("build", str(path))
    assert result.returncode == 2 and message in result.stderr


def test_build_two_profiles_reuses_the_export_and_survives_a_bad_pair(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    exports: list[str] = []
    original = OnnxRuntimeBackend.export

    def counting(
        self: OnnxRuntimeBackend,
        model: Any,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Any = (),
    ) -> Any:
        exports.append(str(model.local_path))
        return original(self, model, workdir, trust_remote_code=trust_remote_code, parts=parts)

    monkeypatch.setattr(OnnxRuntimeBackend, "export", counting)
    # A valid profile the model cannot fit: the pair fails when it runs, not up front.
    tiny_board = tmp_path / "tiny-board.yaml"
    board = yaml.safe_load(PROFILES["x86-64-avx2"].read_text())
    tiny_board.write_text(yaml.safe_dump({**board, "id": "tiny-board", "memory_mb": 1}))
    build = BuildFile(
        models=[ModelEntry(id=str(tiny_bert), recipes=["onnx-fp32"], name="tiny")],
        profiles=["x86-64-avx512-vnni", str(tiny_board), "x86-64-avx2"],
        out=tmp_path / "out",
    )
    with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
        warnings.simplefilter("ignore")
        records, index = run_build(build)
    assert exports == [str(tiny_bert)]  # one export, shared by both profiles
    assert [r["profile"] for r in records] == [
        "x86-64-avx512-vnni",
        str(tiny_board),
        "x86-64-avx2",
    ]
    good = [r for r in records if r["exit_code"] == 0]
    assert len(good) == 2 and all(
        r["verdict"] == "passed" and r["verify"] == "passed" for r in good
    )
    bad = records[1]
    assert bad["exit_code"] == 5 and "tiny-board" in bad["error"] and bad["bundle"] is None
    assert build_exit_code(records) == 5
    for record in good:
        archive = Path(record["archive"])
        assert archive.is_file() and archive.name == Path(record["bundle"]).name + ".tar.gz"
        from edgeport.runners.ondevice import sha256_file

        assert sha256_file(archive) == record["archive_sha256"]
    # Same model, same recipe: every stable file (model, tokenizer, golden) hashes the same;
    # content_sha256 also covers the manifest, whose profile and runtime settings differ.
    assert good[0]["content_sha256"] != good[1]["content_sha256"]
    manifests = [json.loads((Path(r["bundle"]) / "manifest.json").read_text()) for r in good]
    hashes = [{f["path"]: f["sha256"] for f in m["files"]} for m in manifests]
    for name in ("model.onnx", "golden.npz", "tokenizer.json", "verify.py"):
        assert hashes[0][name] == hashes[1][name]
    assert json.loads(index.read_text())["pairs"] == records


@pytest.mark.slow
def test_two_conversions_give_identical_stable_files(tiny_bert: Path, tmp_path: Path) -> None:
    """ONNX export is deterministic: without the export cache, two conversions still agree."""
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = run_cli(
            "convert",
            str(tiny_bert),
            "--profile",
            "x86-64-avx2",
            "--recipe",
            "onnx-int8-dynamic",
            "--out",
            str(out),
            "--archive",
            "--json",
        )
        assert result.returncode == 0, result.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        digests.append(manifest["reproducibility"]["content_sha256"])
    assert digests[0] == digests[1]


@pytest.mark.slow
@needs_minilm
def test_build_two_models_three_profiles(tmp_path: Path) -> None:
    second = build_tiny_bert(tmp_path / "tiny-bert-b", seed=1)
    path = tmp_path / "build.yaml"
    path.write_text(
        "out: out\n"
        f"models:\n  - id: {MINILM}\n  - id: {second}\n    name: tiny-b\n"
        "profiles: [x86-64-avx512-vnni, x86-64-avx2, raspberry-pi-5]\n"
    )
    result = run_cli("build", str(path), "--json")
    assert result.returncode == 0, result.stderr
    pairs = json.loads(result.stdout)["pairs"]
    assert len(pairs) == 6 and all(p["exit_code"] == 0 and p["archive_sha256"] for p in pairs)


# --------------------------------------------------------------------------- up-front checks


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[:2000]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"models: [{id: a/b\nprofiles: [x]\n",
            "malformed YAML (line 2, column 9): expected ',' or '}'",
        ),
        (b"models:\n  - id: a/b\n\tprofiles: [x]\n", "malformed YAML (line 3, column 1):"),
        (b"out: bundles\n\xff\xfe\x00models", "not UTF-8 text (byte 13, line 2)"),
        (
            b"a: &a [1, 2]\nb: [" + b",".join([b"*a"] * 400) + b"]\n",
            "malformed YAML (line 2, column 1004): aliases expand to more than 1000 values",
        ),
    ],
    ids=["unclosed", "tab", "binary", "aliases"],
)
def test_an_unreadable_build_file_is_one_line_exit_2(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "build.yaml"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=re.escape(f"{path}: {expected}")):
        load_build_file(path)
    result = run_cli("build", str(path))
    assert result.returncode == 2
    assert f"{path}: {expected}" in _one_line(result.stderr)


def test_an_unknown_profile_fails_the_build_before_any_conversion(
    tiny_bert: Path, tmp_path: Path
) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(
        f"out: out\nmodels:\n  - id: {tiny_bert}\n"
        "profiles: [x86-64-avx2, raspberry-pi-5, no-such-profile]\n"
    )
    result = run_cli("build", str(path))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith(f"error: {path}: profiles.2: unknown profile 'no-such-profile'")
    assert not (tmp_path / "out").exists()  # nothing converted, not even the valid pairs


def _build(tmp_path: Path, **changes: Any) -> BuildFile:
    model = ModelEntry(id=str(tmp_path), **changes.pop("model", {}))
    return BuildFile(models=[model], profiles=changes.pop("profiles", ["x86-64-avx2"]), **changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": {"recipes": ["onnx-fp32", "onnx-int9"]}}, "models.0.recipes.1: unknown recipe"),
        ({"model": {"task": "image-to-text"}}, "models.0.task: 'image-to-text' is not supported"),
        ({"model": {"revision": "main"}}, "models.0.revision: applies to Hub ids"),
        ({"profiles": ["host", "nope"]}, "profiles.1: unknown profile 'nope'"),
        ({"profiles": ["{tmp}/missing.yaml"]}, "profiles.0: profile file not found"),
        ({"profiles": ["{tmp}/bad.yaml"]}, "profiles.0: {tmp}/bad.yaml: not UTF-8 text"),
        ({"samples": "{tmp}/samples.txt"}, "samples: {tmp}/samples.txt: not UTF-8 text"),
        ({"samples": "{tmp}/none.txt"}, "samples: samples file not found"),
        ({"out": "{tmp}/bad.yaml"}, "out: {tmp}/bad.yaml is a file, not a folder"),
    ],
)
def test_check_build_names_the_field_of_each_problem(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    (tmp_path / "samples.txt").write_bytes(b"\xff\xfe")

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.format(tmp=tmp_path)
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    build = _build(tmp_path, **{key: fill(value) for key, value in changes.items()})
    with pytest.raises(BadInputError) as caught:
        check_build(build)
    message = str(caught.value)
    assert message.startswith(f"build file: {expected.format(tmp=tmp_path)}")
    assert "\n" not in message


def test_check_build_names_the_file_and_counts_the_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(
        "models:\n  - id: ./no/such/folder\n  - {id: 'not a hub id!'}\n"
        "profiles: [x86-64-avx2, nope]\n"
    )
    with pytest.raises(BadInputError) as caught:
        check_build(load_build_file(path))
    assert str(caught.value) == (
        f"{path}: models.0.id: model folder not found: './no/such/folder' (and 2 more)"
    )


def test_a_valid_build_file_passes_the_check(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "samples.txt").write_text("\n".join(f"sample number {i}" for i in range(12)))
    build = _build(
        tiny_bert,
        model={"recipes": ["onnx-fp32"], "task": "feature-extraction"},
        profiles=["x86-64-avx2", "host", str(PROFILES["raspberry-pi-5"])],
        samples=tmp_path / "samples.txt",
        out=tmp_path / "out",
    )
    check_build(build)
    assert not (tmp_path / "out").exists()
