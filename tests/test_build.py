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


# --------------------------------------------------------------------------- shards


def _stub_convert(request: Any, progress: Any) -> Any:
    """A conversion that fails at once, as an unsupported model does: builds without work."""
    from edgeport.errors import UnsupportedError

    raise UnsupportedError(f"stub: {Path(request.profile).stem}")


def _stub_build(tmp_path: Path, models: int = 2, **changes: Any) -> BuildFile:
    return BuildFile(
        models=[ModelEntry(id=str(tmp_path), name=f"m{i}") for i in range(models)],
        profiles=["x86-64-avx2", "raspberry-pi-5", "intel-n100"],
        out=tmp_path / "out",
        **changes,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0/2", "--shard 0/2: I must be between 1 and N"),
        ("3/2", "--shard 3/2: I must be between 1 and N"),
        ("1/0", "--shard 1/0: I must be between 1 and N"),
        ("1-2", "--shard: expected I/N, as in 1/4; got '1-2'"),
        ("one/two", "--shard: expected I/N, as in 1/4; got 'one/two'"),
        ("", "--shard: expected I/N, as in 1/4; got ''"),
    ],
)
def test_a_bad_shard_is_one_line_exit_2(text: str, expected: str) -> None:
    from edgeport.build import Shard

    with pytest.raises(BadInputError) as caught:
        Shard.parse(text)
    assert str(caught.value) == expected


def test_a_bad_shard_on_the_command_line(tmp_path: Path) -> None:
    result = run_cli("build", str(EXAMPLE), "--shard", "3/2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert _one_line(result.stderr) == "error: --shard 3/2: I must be between 1 and N"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_split_the_pairs_once_each_in_file_order(count: int) -> None:
    from edgeport.build import Shard

    numbers = range(1, 7)
    shards = [[n for n in numbers if Shard(i, count).holds(n)] for i in range(1, count + 1)]
    assert sorted(n for shard in shards for n in shard) == list(numbers)
    assert shards[0][0] == 1 and all(len(s) - len(shards[-1]) in (0, 1) for s in shards)
    assert Shard.parse(f"{count}/{count}").index_name == f"index.shard-{count}-of-{count}.json"


def test_shard_indexes_merge_into_the_local_build_index(tmp_path: Path) -> None:
    from edgeport.build import Shard, merge_shards

    build = _stub_build(tmp_path)  # 2 models x 3 profiles: shard 1/4 gets pairs 1 and 5
    local, index = run_build(build, convert=_stub_convert)
    assert index.name == "index.json" and len(local) == 6
    index.unlink()
    shard_pairs = []
    for number in range(1, 5):
        records, path = run_build(build, shard=Shard(number, 4), convert=_stub_convert)
        shard_pairs.append(records)
        data = json.loads(path.read_text())
        assert path.name == f"index.shard-{number}-of-4.json" and data["shard"] == f"{number}/4"
        assert data["pairs_total"] == 6 and data["pairs"] == records
        assert data["pair_numbers"] == list(range(number, 7, 4))
    assert not (build.out / "index.json").exists()  # a shard is not the whole build
    assert [r["profile"] for r in shard_pairs[0]] == ["x86-64-avx2", "raspberry-pi-5"]
    assert shard_pairs[3] == [local[3]]
    merged, path = merge_shards(build)
    assert path == build.out / "index.json" and merged == local
    assert json.loads(path.read_text()) == {"format_version": 1, "pairs": local}
    assert build_exit_code(merged) == 4

    # The command line: the same merge, the build's exit code and --json.
    source = tmp_path / "build.yaml"
    source.write_text(yaml.safe_dump(build.model_dump(mode="json")))
    result = run_cli("build", str(source), "--merge", "--json")
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout)["pairs"] == local
    assert "0/6 pairs shipped" in result.stderr


def test_merge_refuses_what_is_not_one_whole_split(tmp_path: Path) -> None:
    from edgeport.build import Shard, merge_shards

    build = _stub_build(tmp_path)
    with pytest.raises(BadInputError, match=r"--merge: no shard indexes .* in "):
        merge_shards(build)
    run_build(build, shard=Shard(2, 3), convert=_stub_convert)
    with pytest.raises(BadInputError, match=r"--merge: 2 of 3 shards missing in .*: 1/3, 3/3$"):
        merge_shards(build)
    for number in (1, 3):
        run_build(build, shard=Shard(number, 3), convert=_stub_convert)
    merge_shards(build)  # the whole split
    other = build.model_copy(update={"objective": "size"})
    with pytest.raises(BadInputError, match=r"index\.shard-1-of-3\.json is from another build"):
        merge_shards(other)
    run_build(build, shard=Shard(1, 2), convert=_stub_convert)  # a stale split beside it
    with pytest.raises(BadInputError, match=r"several splits \(2 shards, 3 shards\)"):
        merge_shards(build)
    (build.out / "index.shard-1-of-2.json").unlink()
    (build.out / "index.shard-3-of-3.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"index\.shard-3-of-3\.json: not a shard index"):
        merge_shards(build)
    result = run_cli("build", str(EXAMPLE), "--merge", "--shard", "1/2", "--force")
    assert result.returncode == 2
    assert _one_line(result.stderr) == "error: --merge converts nothing: drop --shard, --force"


def _archive_members(archive: Path) -> dict[str, str]:
    """sha256 of every stable file in an archive (the manifest's reproducibility list)."""
    import hashlib
    import tarfile

    with tarfile.open(archive) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        stable = json.load(manifest_file)["reproducibility"]["stable_files"]
        digests = {}
        for name in stable:
            member = tar.extractfile(name)
            assert member is not None, name
            digests[name] = hashlib.sha256(member.read()).hexdigest()
    return digests


def assert_same_bundles(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> None:
    """Two builds' records name the same pairs, verdicts and content_sha256, and their
    archives hold the same stable files. archive_sha256 differs: an archive also holds the
    volatile files (report.md, the manifest's timings), which differ from run to run."""
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        for key in ("bundle", "archive"):
            assert (want[key] is None) == (got[key] is None)
            if want[key] is not None:
                assert Path(want[key]).name == Path(got[key]).name
                assert Path(want[key]) != Path(got[key])  # two builds, two folders
        skip = {"bundle", "archive", "archive_sha256"}
        assert {k: v for k, v in want.items() if k not in skip} == {
            k: v for k, v in got.items() if k not in skip
        }
        if want["archive"] is not None:
            assert want["content_sha256"]
            assert _archive_members(Path(want["archive"])) == _archive_members(Path(got["archive"]))


def tiny_two_profiles(model: Path, out: Path) -> BuildFile:
    """One tiny model on two profiles, with one recipe: the chosen recipe cannot depend on
    timings, so two builds must ship the same bundles."""
    return BuildFile(
        models=[ModelEntry(id=str(model), recipes=["onnx-fp32"], name="tiny")],
        profiles=["x86-64-avx2", "raspberry-pi-5"],
        out=out,
    )


def test_shards_build_the_same_bundles_as_a_local_build(tiny_bert: Path, tmp_path: Path) -> None:
    from edgeport.build import Shard, merge_shards

    with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
        warnings.simplefilter("ignore")
        local, _ = run_build(tiny_two_profiles(tiny_bert, tmp_path / "local"))
        sharded = tiny_two_profiles(tiny_bert, tmp_path / "sharded")
        first, _ = run_build(sharded, shard=Shard(1, 2))
        second, _ = run_build(sharded, shard=Shard(2, 2))
    assert [r["profile"] for r in first + second] == ["x86-64-avx2", "raspberry-pi-5"]
    assert [r["exit_code"] for r in local] == [0, 0]
    merged, _ = merge_shards(sharded)
    assert merged == first + second
    assert_same_bundles(local, merged)
    assert not (tmp_path / "sharded" / ".export-cache").exists()
