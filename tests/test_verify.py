"""Self-verifying bundles: golden data, verify.py on the device, `edgeport verify` on the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import (
    copy_bundle,
    read_manifest,
    reseal,
    tiny_bundle_once,
    write_manifest,
)
from conftest import run_cli

from edgeport.families import families
from edgeport.golden import pick, thresholds, write_npz
from edgeport.runners.ondevice import sha256_file
from edgeport.schemas import Tolerance
from edgeport.verify import verify


@pytest.fixture(scope="session")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_once(tiny_bert, tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def tampered(bundle: Path, tmp_path: Path) -> Path:
    return copy_bundle(bundle, tmp_path / "bundle")


def run_verify_py(
    bundle: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "verify.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=bundle,
        check=False,
        timeout=300,
    )


# --------------------------------------------------------------------------- golden data


def test_pick_spreads_over_lengths_and_keeps_extremes() -> None:
    lengths = [12, 3, 40, 7, 7, 25, 90, 15, 5, 60]
    chosen = pick(lengths, 4)
    assert len(chosen) == 4
    assert lengths.index(3) in chosen and lengths.index(90) in chosen
    assert pick([5, 6], 6) == [0, 1]


def test_thresholds_follow_validation_defaults() -> None:
    encoder = families()["encoder"]
    embedding, classification = (
        encoder.thresholds("feature-extraction"),
        encoder.thresholds("text-classification"),
    )
    assert thresholds(embedding, Tolerance()) == {"embedding_cosine_min": 0.99}
    assert thresholds(
        embedding, Tolerance(embedding_cosine_min=0.9, embedding_cosine_mean_min=0.95)
    ) == {
        "embedding_cosine_min": 0.9,
        "embedding_cosine_mean": 0.95,
    }
    assert thresholds(classification, Tolerance(top1_agreement_min=0.97)) == {
        "top1_agreement": 0.97
    }
    assert thresholds((), Tolerance()) == {}


def test_write_npz_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    arrays = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.ones((1, 4), dtype=np.int64),
    }
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz") as data:
        assert sorted(data.files) == ["a", "b"]
        np.testing.assert_array_equal(data["b"], arrays["b"])


def test_bundle_carries_golden_data_and_verifier(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    listed = {entry["path"] for entry in manifest["files"]}
    assert {"golden.npz", "verify.py", "run.py"} <= listed
    golden = manifest["golden"]
    assert golden["thresholds"] == {
        "embedding_cosine_min": manifest["tolerance"]["embedding_cosine_min"]
    }
    assert 4 <= len(golden["texts"]) <= 8 and len(golden["tokens"]) == len(golden["texts"])
    assert min(golden["tokens"]) < max(golden["tokens"])  # short and long texts
    with np.load(bundle / "golden.npz") as data:
        assert data["input.0.input_ids"].dtype == np.int64
        assert data["output.0.last_hidden_state"].shape[:2] == data["input.0.input_ids"].shape
    assert manifest["reproducibility"]["volatile"][0]["path"] == "manifest.json"


# --------------------------------------------------------------------------- verification


def test_host_verify_passes(bundle: Path) -> None:
    result = verify(bundle, runs=2)
    assert result["passed"], result["failures"]
    assert result["exit_code"] == 0
    metric = result["golden"]["metrics"][0]
    assert metric["name"] == "embedding_cosine_min" and metric["value"] >= metric["threshold"]
    assert result["golden"]["outputs"][0]["max_abs_error"] < 1e-3
    assert result["latency"]["runs"] == 2


def test_verify_py_needs_neither_torch_nor_tokenizers(bundle: Path, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    for name in ("torch", "transformers", "tokenizers", "edgeport", "optimum"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on this device')\n"
        )
    result = run_verify_py(bundle, "--json", env={"PYTHONPATH": str(shim)})
    assert result.returncode == 0, result.stderr + result.stdout
    payload = json.loads(result.stdout)
    assert payload["passed"] and payload["golden"]["samples"] == len(
        read_manifest(bundle)["golden"]["texts"]
    )
    assert result.stderr.startswith("PASS")


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
def test_tampered_files_fail_with_the_file_named(tampered: Path, damage: str) -> None:
    if damage == "changed":
        with (tampered / "tokenizer.json").open("a", encoding="utf-8") as handle:
            handle.write(" ")
        name = "tokenizer.json"
    elif damage == "missing":
        (tampered / "vocab.txt").unlink()
        name = "vocab.txt"
    else:
        (tampered / "notes.txt").write_text("not shipped by edgeport\n")
        name = "notes.txt"
    result = run_verify_py(tampered)
    assert result.returncode == 3
    assert result.stdout.startswith("FAIL") and f"{damage}: {name}" in result.stdout
    host = run_cli("verify", str(tampered), "--json", "--runs", "0")
    assert host.returncode == 3
    assert json.loads(host.stdout)["files"][damage] == [name]


def test_outputs_outside_tolerance_fail(tampered: Path) -> None:
    """Golden data that disagrees with the model (checksums kept consistent) fails accuracy."""
    with np.load(tampered / "golden.npz") as data:
        arrays = {name: data[name] for name in data.files}
    rng = np.random.default_rng(0)
    for name in arrays:
        if name.startswith("output."):
            arrays[name] = rng.standard_normal(arrays[name].shape).astype(np.float32)
    write_npz(tampered / "golden.npz", arrays)
    manifest = read_manifest(tampered)
    for entry in manifest["files"]:
        if entry["path"] == "golden.npz":
            entry["sha256"] = sha256_file(tampered / "golden.npz")
            entry["bytes"] = (tampered / "golden.npz").stat().st_size
    write_manifest(tampered, reseal(manifest))
    result = run_verify_py(tampered, "--json", "--runs", "0")
    assert result.returncode == 3
    payload = json.loads(result.stdout)
    assert payload["files"]["failures"] == []
    assert any("embedding_cosine_min" in failure for failure in payload["failures"])


def test_malformed_bundles_exit_2(tampered: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tampered)
    manifest["runtime"]["runner"] = "tflite"
    write_manifest(tampered, reseal(manifest))
    result = run_verify_py(tampered)
    assert result.returncode == 2 and "tflite" in result.stdout

    (tampered / "manifest.json").write_text("{not json")
    assert run_verify_py(tampered).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    host = run_cli("verify", str(empty))
    assert host.returncode == 2 and "manifest.json" in host.stderr
    assert run_cli("verify", str(tmp_path / "nowhere")).returncode == 2
