"""manifest.json is covered: its stable part is hashed at conversion and checked by both
verifiers, and no path in it may lead run.py or verify.py out of the bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import copy_bundle, read_manifest, reseal, tiny_bundle_once, write_manifest

from edgeport.runners import ondevice
from edgeport.runners.ondevice import sha256_file
from edgeport.verify import verify

MODIFIED = "manifest.json was modified after conversion"
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="session")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_once(tiny_bert, tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def tampered(bundle: Path, tmp_path: Path) -> Path:
    # One level down, so that "../../outside" from the bundle lands inside tmp_path.
    return copy_bundle(bundle, tmp_path / "bundles" / "tiny")


def run_script(bundle: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / script), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=bundle,
        check=False,
        timeout=300,
    )


def edited(bundle: Path, edit: Edit, *, seal: bool = False) -> None:
    manifest = read_manifest(bundle)
    edit(manifest)
    write_manifest(bundle, reseal(manifest) if seal else manifest)


def _threshold(m: dict[str, Any]) -> None:
    thresholds = m["golden"]["thresholds"]
    name = next(iter(thresholds))
    thresholds[name] = round(thresholds[name] - 0.1, 4)  # 0.9999 -> 0.8999


def _tolerance(m: dict[str, Any]) -> None:
    m["tolerance"]["embedding_cosine_min"] = 0.5


def _threads(m: dict[str, Any]) -> None:
    m["runtime"]["threads"] += 1


def _pooling(m: dict[str, Any]) -> None:
    m["runtime"]["pooling"] = "cls" if m["runtime"]["pooling"] != "cls" else "mean"


def _text(m: dict[str, Any]) -> None:
    m["golden"]["reference"] += "."


def _declared_volatile(m: dict[str, Any]) -> None:
    """The verifier's volatile list is its own: declaring `runtime` volatile changes nothing."""
    m["reproducibility"]["volatile"][0]["fields"].append("runtime")
    m["runtime"]["threads"] += 1


def _content_sha256(m: dict[str, Any]) -> None:
    m["reproducibility"]["content_sha256"] = "0" * 64


def _stable_file_entry(m: dict[str, Any]) -> None:
    """A stable file's entry is part of the digest even where the file agrees with it."""
    m["files"] = [f for f in m["files"] if f["path"] != "vocab.txt"]


@pytest.mark.parametrize(
    "edit",
    [
        _threshold,
        _tolerance,
        _threads,
        _pooling,
        _text,
        _declared_volatile,
        _content_sha256,
        _stable_file_entry,
    ],
)
def test_edited_manifest_fails_both_verifiers(tampered: Path, edit: Edit) -> None:
    edited(tampered, edit)
    host = verify(tampered, runs=0)
    assert host["exit_code"] == 3 and not host["passed"]
    assert any(f.startswith(MODIFIED) for f in host["failures"]), host["failures"]
    assert "skipped" in host["golden"]  # thresholds in doubt: not vouched for

    device = run_script(tampered, "verify.py", "--runs", "0")
    assert device.returncode == 3, device.stdout + device.stderr
    assert device.stdout.startswith("FAIL") and MODIFIED in device.stdout
    assert len(device.stdout.strip().splitlines()) == 1


def test_manifest_without_digest_fails_closed(tampered: Path) -> None:
    """A bundle from an edgeport that did not record the digest cannot vouch for its settings."""
    edited(tampered, lambda m: m.pop("reproducibility"))
    host = verify(tampered, runs=0)
    assert host["exit_code"] == 3
    assert any("manifest.json is unprotected" in f for f in host["failures"])
    device = run_script(tampered, "verify.py", "--runs", "0")
    assert device.returncode == 3 and "manifest.json is unprotected" in device.stdout


def _timings(m: dict[str, Any]) -> None:
    for attempt in m["attempts"]:
        attempt["duration_s"] = 123.0
        attempt["latency_ratio"] = 0.5
        if attempt.get("measurement"):
            attempt["measurement"]["latency_ms"] *= 3
            attempt["measurement"]["latency_p90_ms"] *= 3
            attempt["measurement"]["peak_memory_mb"] += 10
    m["metrics"]["latency_ratio_vs_fp32"] = 0.25


def test_volatile_timings_and_report_may_change(tampered: Path) -> None:
    """What a second conversion measures differently is not held against the bundle."""
    (tampered / "report.md").write_text("# measured again on a busier host\n", encoding="utf-8")

    def edit(m: dict[str, Any]) -> None:
        _timings(m)
        for entry in m["files"]:
            if entry["path"] == "report.md":
                entry["sha256"] = sha256_file(tampered / "report.md")
                entry["bytes"] = (tampered / "report.md").stat().st_size

    edited(tampered, edit)
    host = verify(tampered, runs=0)
    assert host["passed"], host["failures"]
    device = run_script(tampered, "verify.py", "--runs", "0")
    assert device.returncode == 0, device.stdout + device.stderr


def test_digest_ignores_formatting_but_not_values(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    digest = ondevice.manifest_digest(manifest)
    assert digest == manifest["reproducibility"]["manifest_sha256"]
    reordered = json.loads(json.dumps(dict(reversed(list(manifest.items())))))
    assert ondevice.manifest_digest(reordered) == digest
    _timings(reordered)
    assert ondevice.manifest_digest(reordered) == digest
    _threshold(reordered)
    assert ondevice.manifest_digest(reordered) != digest


# --------------------------------------------------------------------------- paths

OUTSIDE = "../../outside/other.onnx"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_file", OUTSIDE),
        ("model_file", "/etc/passwd"),
        ("model_file", "sub\\model.onnx"),
        ("model_file", "C:model.onnx"),
        ("model_file", "./model.onnx"),
        ("golden", "../golden.npz"),
        ("files", "../tiny/model.onnx"),
    ],
)
def test_paths_leaving_the_bundle_are_refused(tampered: Path, field: str, value: str) -> None:
    """Refused before anything loads, even with the digests recomputed by whoever edited it."""

    def edit(m: dict[str, Any]) -> None:
        if field == "model_file":
            m["runtime"]["model_file"] = value
        elif field == "golden":
            m["golden"]["file"] = value
        else:
            m["files"][0]["path"] = value

    edited(tampered, edit, seal=True)
    host = verify(tampered, runs=0)
    assert host["exit_code"] == 2 and "is refused" in host["failures"][0]
    device = run_script(tampered, "verify.py", "--runs", "0")
    assert device.returncode == 2 and "is refused" in device.stdout
    assert len(device.stdout.strip().splitlines()) == 1


def test_run_py_refuses_a_model_outside_the_bundle(tampered: Path) -> None:
    # A loadable model really is there: only the path check stands between run.py and it.
    outside = tampered.parent.parent / "outside"
    outside.mkdir()
    shutil.copy2(
        tampered / read_manifest(tampered)["runtime"]["model_file"], outside / "other.onnx"
    )
    assert (tampered / OUTSIDE).resolve() == (outside / "other.onnx").resolve()
    edited(tampered, lambda m: m["runtime"].update(model_file=OUTSIDE), seal=True)

    result = run_script(tampered, "run.py", "hello world")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("run.py: manifest.json: runtime.model_file")
    assert "'..' leaves the bundle" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_links_out_of_the_bundle_are_refused(tampered: Path) -> None:
    outside = tampered.parent / "elsewhere.onnx"
    model_file = read_manifest(tampered)["runtime"]["model_file"]
    shutil.copy2(tampered / model_file, outside)
    (tampered / "linked.onnx").symlink_to(outside)
    edited(tampered, lambda m: m["runtime"].update(model_file="linked.onnx"), seal=True)
    for script, args in (("verify.py", ["--runs", "0"]), ("run.py", ["hello"])):
        result = run_script(tampered, script, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "outside the bundle" in result.stdout + result.stderr


def test_run_py_checks_through_the_bundles_ondevice_py(tampered: Path) -> None:
    ok = run_script(tampered, "run.py", "hello world")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["results"]) == 1
    assert not (tampered / "__pycache__").exists()  # the bundle folder stays as shipped

    (tampered / "ondevice.py").unlink()
    missing = run_script(tampered, "run.py", "hello world")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == "run.py: no ondevice.py beside run.py; copy the whole bundle"


def test_every_runner_loads_the_bundles_own_ondevice_module() -> None:
    """run.py may not import edgeport: each runner imports the ondevice.py beside it, the
    one copy of the code a bundle runs, with the same few lines."""
    runners = Path(ondevice.__file__).parent
    blocks = set()
    for path in sorted(runners.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "ondevice.runner_manifest(HERE)" not in text:
            continue
        start = text.index("HERE = Path(__file__)")
        blocks.add(text[start : text.index("raise SystemExit(2) from exc", start)])
    assert len(blocks) == 1
