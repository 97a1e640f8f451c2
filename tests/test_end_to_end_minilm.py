"""The issue's own command: the real all-MiniLM-L6-v2 through the offline Hub cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import MINILM, needs_minilm, run_cli


@needs_minilm
def test_minilm_bundle_matches_the_original(tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "minilm"
    result = run_cli(
        "convert", MINILM, "--profile", "x86-64-avx512-vnni", "--out", str(out), "--json"
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verdict"] == "passed"
    assert payload["commit"] == "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
    assert payload["metrics"]["embedding_cosine_min"] >= 0.99
    assert "Plan for x86-64-avx512-vnni" in result.stderr  # says what it chose and why

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["commit"] == payload["commit"]
    assert manifest["runtime"]["pooling"] == "mean" and manifest["runtime"]["normalize_embeddings"]
    if manifest["runtime"]["target"] == "openvino":  # the layers skip the batch's padding
        assert any(note.startswith("padding removed") for note in manifest["notes"])

    shim = tmp_path / "shim"
    shim.mkdir()
    for module in ("torch", "transformers"):
        (shim / f"{module}.py").write_text("raise ImportError('not on the device')\n")
    run = subprocess.run(
        [
            sys.executable,
            str(out / "run.py"),
            "The cat sat on the mat.",
            "A feline rested on the rug.",
            "Stock prices fell sharply.",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(shim)},
    )
    assert run.returncode == 0, run.stderr
    vectors = json.loads(run.stdout)["results"]
    assert len(vectors[0]) == 384
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert similar > unrelated + 0.2  # the shipped model still understands sentences


@needs_minilm
def test_runner_output_matches_the_original_model_on_golden_texts(tmp_path: Path) -> None:
    """run.py pools on its own (it may not import edgeport); hold it to the PyTorch outputs."""
    import numpy as np

    from edgeport.validate import cosine_rows, pool

    out = tmp_path / "minilm"
    result = run_cli(
        "convert",
        MINILM,
        "--profile",
        "raspberry-pi-4",
        "--out",
        str(out),
        "--recipe",
        "onnx-fp32",
        "--recipe",
        "onnx-int8-dynamic",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    golden = manifest["golden"]
    run = subprocess.run(
        [sys.executable, str(out / "run.py"), *golden["texts"]],
        capture_output=True,
        text=True,
        check=True,
    )
    embeddings = np.array(json.loads(run.stdout)["results"])
    with np.load(out / golden["file"]) as data:
        expected = np.concatenate(
            [
                pool(
                    data[f"output.{index}.last_hidden_state"],
                    data[f"input.{index}.attention_mask"],
                    manifest["runtime"]["pooling"],
                    manifest["runtime"]["normalize_embeddings"],
                )
                for index in range(len(golden["texts"]))
            ]
        )
    cosines = cosine_rows(embeddings, expected)
    assert cosines.min() >= golden["thresholds"]["embedding_cosine_min"]
