"""The CLI as a user meets it: bundles that work, and one-line errors with exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeport.runners.ondevice import sha256_file

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _blocking_shim(folder: Path, modules: list[str]) -> Path:
    """A PYTHONPATH folder where importing any of `modules` fails, like a bare device."""
    folder.mkdir(parents=True, exist_ok=True)
    for module in modules:
        (folder / f"{module}.py").write_text(
            f"raise ImportError('{module} is not on the device')\n"
        )
    return folder


@pytest.fixture(scope="module")
def tiny_bundle(
    tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    from conftest import run_cli

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = run_cli(
        "convert", str(tiny_bert), "--profile", "x86-64-avx512-vnni", "--out", str(out), "--json"
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_convert_writes_a_complete_bundle(tiny_bundle: tuple[Path, dict[str, object]]) -> None:
    out, payload = tiny_bundle
    names = {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    model_file = manifest["runtime"]["model_file"]
    assert model_file in {"model.onnx", "openvino_model.xml"}
    assert {model_file, "tokenizer.json", "manifest.json", "report.md", "run.py"} <= names
    assert {"requirements.txt", "verify.py", "golden.npz"} <= names
    assert payload["verdict"] == "passed"
    assert payload["bundle"] == str(out)
    assert payload["recipe"] == manifest["recipe"]["id"]
    assert payload["metrics"]["embedding_cosine_min"] >= 0.99  # type: ignore[index]
    # No temporary folder is left beside the bundle.
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]


def test_manifest_checksums_cover_every_file(tiny_bundle: tuple[Path, dict[str, object]]) -> None:
    out, _ = tiny_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    on_disk = {p.name for p in out.iterdir() if p.name != "manifest.json"}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert sha256_file(out / name) == digest
    assert manifest["versions"]["onnxruntime"]
    assert manifest["recipe"]["id"] == manifest["attempts"][-1]["recipe_id"] or any(
        a["status"] == "passed" for a in manifest["attempts"]
    )
    assert {a["recipe_id"] for a in manifest["attempts"]} >= {"onnx-fp32", "onnx-int8-dynamic"}


def test_runner_embeds_text_without_torch(
    tiny_bundle: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    out, _ = tiny_bundle
    shim = _blocking_shim(tmp_path / "shim", ["torch", "transformers", "optimum"])
    result = subprocess.run(
        [sys.executable, str(out / "run.py"), "hello world", "a second, longer sentence to embed"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(shim)},
    )
    assert result.returncode == 0, result.stderr
    embeddings = json.loads(result.stdout)["results"]
    assert len(embeddings) == 2
    assert len(embeddings[0]) == 32  # hidden size of the tiny model


def test_report_explains_choice(tiny_bundle: tuple[Path, dict[str, object]]) -> None:
    out, _ = tiny_bundle
    report = (out / "report.md").read_text()
    assert "planned because" in report
    assert "onnx-fp16" in report  # dropped: no native fp16 on this profile, and says so
    assert "disjoint" in report


def test_existing_bundle_is_not_overwritten(
    cli: Cli, tiny_bert: Path, tiny_bundle: tuple[Path, dict[str, object]]
) -> None:
    out, _ = tiny_bundle
    before = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    result = cli("convert", str(tiny_bert), "--profile", "x86-64-avx2", "--out", str(out))
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == before


def test_unknown_profile_is_bad_input(cli: Cli, tiny_bert: Path) -> None:
    result = cli("plan", str(tiny_bert), "--profile", "toaster-9000")
    assert result.returncode == 2
    assert "unknown profile 'toaster-9000'" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_profile_yaml_is_bad_input(cli: Cli, tiny_bert: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: broken\ncpu: [unclosed\n")
    result = cli("plan", str(tiny_bert), "--profile", str(broken))
    assert result.returncode == 2
    assert "malformed YAML" in result.stderr and "broken.yaml" in result.stderr


def test_profile_with_unknown_key_names_file_and_field(
    cli: Cli, tiny_bert: Path, tmp_path: Path
) -> None:
    source = Path(__file__).resolve().parents[1] / "profiles" / "raspberry-pi-4.yaml"
    profile = tmp_path / "raspberry-pi-4.yaml"
    profile.write_text(source.read_text() + "gpu_count: 2\n")
    result = cli("plan", str(tiny_bert), "--profile", str(profile))
    assert result.returncode == 2
    assert "gpu_count: unknown key" in result.stderr


def test_model_missing_from_offline_cache(cli: Cli) -> None:
    result = cli("plan", "example-org/not-a-cached-model", "--profile", "x86-64-avx2")
    assert result.returncode == 2
    assert "not in the Hugging Face cache" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")  # one line, no traceback
    assert "Traceback" not in result.stderr


def test_missing_model_folder(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "convert", str(tmp_path / "nope"), "--profile", "x86-64-avx2", "--out", str(tmp_path / "b")
    )
    assert result.returncode == 2
    assert "model folder not found" in result.stderr
    assert not (tmp_path / "b").exists()


def test_unsupported_task(cli: Cli, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = cli(
        "convert",
        str(tiny_bert),
        "--profile",
        "x86-64-avx2",
        "--task",
        "object-detection",
        "--out",
        str(out),
    )
    assert result.returncode == 4
    assert "not supported" in result.stderr
    assert not out.exists()


def test_a_text_model_asked_for_a_vision_task_says_what_is_missing(
    cli: Cli, tiny_bert: Path
) -> None:
    result = cli(
        "plan", str(tiny_bert), "--profile", "x86-64-avx2", "--task", "image-classification"
    )
    assert result.returncode == 4
    assert "preprocessor_config.json" in result.stderr


def test_accuracy_gate_failure_ships_nothing(cli: Cli, tiny_bert: Path, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "impossible-int8.yaml").write_text(
        "id: impossible-int8\n"
        "description: int8 held to a tolerance nothing quantised can meet\n"
        "target: onnxruntime\nsafety: 3\n"
        "quantize: {scheme: int8-dynamic, per_channel: false}\n"
        "tolerance: {embedding_cosine_min: 1.0}\n"
        "expect: {size_factor: 0.3, speedup: 2.0}\n"
    )
    out = tmp_path / "bundle"
    result = cli(
        "convert",
        str(tiny_bert),
        "--profile",
        "x86-64-avx2",
        "--recipes-dir",
        str(recipes),
        "--recipe",
        "impossible-int8",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 3, result.stderr
    assert not out.exists()
    payload = json.loads(result.stdout)
    assert payload["verdict"] == "failed"
    report = Path(payload["report"])
    assert report.is_file() and "embedding_cosine_min" in report.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    degraded = cli(
        "convert",
        str(tiny_bert),
        "--profile",
        "x86-64-avx2",
        "--recipes-dir",
        str(recipes),
        "--recipe",
        "impossible-int8",
        "--out",
        str(out),
        "--accept-degraded",
        "--json",
    )
    assert degraded.returncode == 0, degraded.stderr
    assert json.loads(degraded.stdout)["verdict"] == "degraded"
    assert json.loads((out / "manifest.json").read_text())["verdict"] == "degraded"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    heavy = "('torch', 'onnxruntime', 'openvino', 'transformers')"
    code = f"import sys, edgeport.cli; print(any(m in sys.modules for m in {heavy}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def _tiny_profile(folder: Path, memory_mb: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-board.yaml"
    path.write_text(
        "name: A board with almost no memory\n"
        "source: test\n"
        "cpu: {arch: arm64, cores: 4, features: [neon, dotprod]}\n"
        f"memory_mb: {memory_mb}\n"
        "runtimes:\n"
        "  - target: onnxruntime\n"
        "    devices: [CPUExecutionProvider]\n",
        encoding="utf-8",
    )
    return path


def test_nothing_fits_exits_5_with_the_numbers(cli: Cli, tiny_bert: Path, tmp_path: Path) -> None:
    """Recipes dropped for other reasons (other runtimes, ISA) do not hide that the ones
    the board could run are all too big for its memory."""
    profile = _tiny_profile(tmp_path / "profiles", memory_mb=8)
    out = tmp_path / "bundle"
    result = cli("convert", str(tiny_bert), "--profile", str(profile), "--out", str(out))
    assert result.returncode == 5, result.stderr
    assert "nothing fits tiny-board" in result.stderr
    assert "needs ~" in result.stderr and "8 MB" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # "Resolving ..." and the error
    assert not out.exists()

    planned = cli("plan", str(tiny_bert), "--profile", str(profile), "--json")
    assert planned.returncode == 5
    payload = json.loads(planned.stdout)  # one object: the plan and the error
    assert payload["candidates"] == []
    assert payload["error"]["exit_code"] == 5
    assert any(d["code"] == "memory" and d["estimated_memory_mb"] for d in payload["dropped"])


def test_json_bad_input_prints_one_error_object(cli: Cli, tiny_bert: Path) -> None:
    result = cli("convert", str(tiny_bert), "--profile", "no-such-board", "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 2 and "unknown profile" in error["message"]

    usage = cli("verify", "--json")
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["error"]["type"] == "UsageError"


def test_sigterm_leaves_nothing_behind(tiny_bert: Path, tmp_path: Path) -> None:
    """CI cancellation sends SIGTERM: the work folder and any half-written bundle go."""
    import signal
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out" / "bundle"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeport",
            "convert",
            str(tiny_bert),
            "--profile",
            "x86-64-avx2",
            "--out",
            str(out),
        ],
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(scratch.glob("edgeport-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.1)
    time.sleep(2.0)  # well into the work: export, reference outputs
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated" in stderr
    assert not any(scratch.glob("edgeport-*")), sorted(p.name for p in scratch.iterdir())
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())
