"""`edgeport build`: models x profiles from a YAML file, export reuse, index, exit code."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import MINILM, build_tiny_bert, needs_minilm, run_cli

from edgeport.build import BuildFile, ModelEntry, build_exit_code, load_build_file, run_build
from edgeport.errors import BadInputError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "build.yaml"


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
        self: OnnxRuntimeBackend, model: Any, workdir: Path, *, trust_remote_code: bool
    ) -> Any:
        exports.append(str(model.local_path))
        return original(self, model, workdir, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(OnnxRuntimeBackend, "export", counting)
    build = BuildFile(
        models=[ModelEntry(id=str(tiny_bert), recipes=["onnx-fp32"], name="tiny")],
        profiles=["x86-64-avx512-vnni", "no-such-profile", "x86-64-avx2"],
        out=tmp_path / "out",
    )
    with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
        warnings.simplefilter("ignore")
        records, index = run_build(build)
    assert exports == [str(tiny_bert)]  # one export, shared by both profiles
    assert [r["profile"] for r in records] == [
        "x86-64-avx512-vnni",
        "no-such-profile",
        "x86-64-avx2",
    ]
    good = [r for r in records if r["exit_code"] == 0]
    assert len(good) == 2 and all(
        r["verdict"] == "passed" and r["verify"] == "passed" for r in good
    )
    bad = records[1]
    assert bad["exit_code"] == 2 and "no-such-profile" in bad["error"] and bad["bundle"] is None
    assert build_exit_code(records) == 2
    for record in good:
        archive = Path(record["archive"])
        assert archive.is_file() and archive.name == Path(record["bundle"]).name + ".tar.gz"
        from edgeport.bundle import sha256_file

        assert sha256_file(archive) == record["archive_sha256"]
    # Same model, same recipe: every stable file (model, tokenizer, golden) hashes the same.
    assert good[0]["content_sha256"] == good[1]["content_sha256"]
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
