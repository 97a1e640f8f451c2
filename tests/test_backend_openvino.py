"""The OpenVINO backend on a tiny random BERT: every scheme, the bundle, int4 block sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import TRAINING_TEXT, run_cli

from edgeport.backends import Artifact, Feeds
from edgeport.backends.openvino import (
    TOKENIZER_FILES,
    OpenVinoBackend,
    choose_group_size,
    weight_input_channels,
)
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.schemas import Candidate, ModelInfo, Quantization, Recipe
from edgeport.text_inputs import TextEncoder

pytestmark = pytest.mark.openvino

# Worst pooled-embedding cosine vs the fp32 OpenVINO export, per recipe, on a random
# 32-wide BERT (random weights quantise worse than trained ones).
SCHEMES = {
    "openvino-fp32": 0.99999,
    "openvino-fp16": 0.999,
    "openvino-int8-weight": 0.99,
    "openvino-int8-static": 0.95,
    "openvino-int4-weight": 0.8,
}
TEXTS = [*TRAINING_TEXT, "short", "a somewhat longer sentence about small devices and tokens"]


def _candidate(recipe: Recipe, device: str = "CPU") -> Candidate:
    return Candidate(
        recipe=recipe,
        target=load_catalog().targets["openvino"],
        device=device,
        estimated_memory_mb=1.0,
        estimated_size_mb=1.0,
        estimated_speedup=1.0,
        reason="test",
    )


def _pooled(outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    hidden = outputs["last_hidden_state"].astype(np.float64)
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)  # type: ignore[no-any-return]


class Setup:
    def __init__(self, tiny_bert: Path, workdir: Path) -> None:
        self.info: ModelInfo = inspect_model(resolve(str(tiny_bert)))
        self.backend = OpenVinoBackend()
        self.exported = self.backend.export(self.info, workdir, trust_remote_code=False)
        self.workdir = workdir
        self.encoder = TextEncoder(tiny_bert, self.info.max_length, self.exported.input_names)
        self.calibration = [self.encoder.encode([text]) for text in TRAINING_TEXT * 2]
        self.batch: Feeds = self.encoder.encode(TEXTS)
        self.catalog = load_catalog()

    def build(self, recipe_id: str, device: str = "CPU") -> Artifact:
        recipe = self.catalog.recipe(recipe_id)
        return self.backend.build(
            self.exported,
            _candidate(recipe, device),
            self.info,
            self.calibration,
            self.workdir / "candidates" / f"{recipe_id}-{device}",
        )

    def embed(self, artifact: Artifact, device: str = "CPU") -> np.ndarray:
        session = self.backend.load(artifact, device, threads=1)
        return _pooled(session.run(self.batch), self.batch["attention_mask"])


@pytest.fixture(scope="module")
def ov(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tiny_bert, tmp_path_factory.mktemp("openvino"))


@pytest.fixture(scope="module")
def reference(ov: Setup) -> np.ndarray:
    exported = ov.exported
    artifact = Artifact(
        exported.directory,
        exported.model_file,
        (exported.model_file,),
        exported.input_names,
        exported.output_names,
    )
    return ov.embed(artifact)


def test_export_names_and_tokenizer(ov: Setup) -> None:
    exported = ov.exported
    assert exported.target_id == "openvino"
    assert set(exported.input_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert exported.output_names == ("last_hidden_state",)
    assert all((exported.directory / name).is_file() for name in TOKENIZER_FILES)


def test_tokenizer_ir_matches_the_hf_tokenizer(ov: Setup) -> None:
    import openvino as ov_runtime
    import openvino_tokenizers  # noqa: F401

    compiled = ov_runtime.Core().compile_model(
        str(ov.exported.directory / TOKENIZER_FILES[0]), "CPU"
    )
    result = compiled(TEXTS)
    ids = np.asarray(result["input_ids"])
    mask = np.asarray(result["attention_mask"])
    np.testing.assert_array_equal(ids * mask, ov.batch["input_ids"] * ov.batch["attention_mask"])


@pytest.mark.parametrize("recipe_id", sorted(SCHEMES))
def test_each_scheme_builds_and_agrees(ov: Setup, reference: np.ndarray, recipe_id: str) -> None:
    artifact = ov.build(recipe_id)
    assert artifact.model_file == "openvino_model.xml"
    assert {"openvino_model.xml", "openvino_model.bin", *TOKENIZER_FILES} == set(artifact.files)
    assert artifact.output_names == ("last_hidden_state",)
    cosine = (ov.embed(artifact) * reference).sum(axis=-1)
    assert cosine.min() >= SCHEMES[recipe_id], (recipe_id, cosine)
    fp32_bin = (ov.exported.directory / "openvino_model.bin").stat().st_size
    weights = (artifact.directory / "openvino_model.bin").stat().st_size
    if recipe_id == "openvino-fp32":  # fp32 weights, plus a few constants of padding removal
        assert fp32_bin <= weights <= fp32_bin + 1024
    else:
        assert weights < 0.6 * fp32_bin, (recipe_id, weights, fp32_bin)


def test_accelerator_device_is_emulated_on_cpu_with_a_note(
    ov: Setup, reference: np.ndarray
) -> None:
    artifact = ov.build("openvino-fp16", device="GPU")
    assert any("GPU not present here" in note for note in artifact.notes)
    assert "padding kept: removed on CPU only, not on GPU" in artifact.notes
    cosine = (ov.embed(artifact, device="GPU") * reference).sum(axis=-1)
    assert cosine.min() >= 0.99


def test_bench_style_artifact_discovers_output_names(ov: Setup) -> None:
    artifact = ov.build("openvino-int8-weight")
    bare = Artifact(
        artifact.directory, artifact.model_file, (artifact.model_file,), tuple(ov.batch), ()
    )
    session = ov.backend.load(bare, "CPU", 1)
    assert session.output_names == ("last_hidden_state",)
    assert session.run(ov.batch)["last_hidden_state"].shape[:2] == ov.batch["input_ids"].shape


def test_static_int8_needs_calibration(ov: Setup) -> None:
    from edgeport.errors import UnsupportedError

    recipe = ov.catalog.recipe("openvino-int8-static")
    with pytest.raises(UnsupportedError, match="calibration"):
        ov.backend.build(ov.exported, _candidate(recipe), ov.info, [], ov.workdir / "nocal")


# ----------------------------------------------------------------- int4 block sizes


def test_choose_group_size() -> None:
    assert choose_group_size(128, [384, 1536]) == (128, False)
    assert choose_group_size(128, [688, 2752]) == (16, False)  # 688 = 16 x 43
    assert choose_group_size(128, [384, 100]) == (128, True)  # per-layer fallback
    assert choose_group_size(None, [688]) == (-1, False)
    assert choose_group_size(-1, [7]) == (-1, False)


def _odd_model() -> Any:
    import openvino as ov_runtime
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    data = ops.parameter([1, 4, 688], np.float32, name="x")
    up = ops.matmul(
        data, ops.constant(rng.standard_normal((2752, 688), dtype=np.float32)), False, True
    )
    mid = ops.matmul(
        up, ops.constant(rng.standard_normal((100, 2752), dtype=np.float32)), False, True
    )
    down = ops.matmul(
        mid, ops.constant(rng.standard_normal((688, 100), dtype=np.float32)), False, True
    )
    return ov_runtime.Model([ops.result(down)], [data], "odd")


def test_int4_with_hidden_688_and_an_odd_layer_does_not_crash() -> None:
    model = _odd_model()
    assert sorted(weight_input_channels(model)) == [100, 688, 2752]
    quantization = Quantization(scheme="int4-weight", group_size=128, ratio=1.0, all_layers=True)
    compressed, note = OpenVinoBackend()._compress_int4(model, quantization)
    assert "per layer" in note
    types = {
        op.get_element_type().get_type_name()
        for op in compressed.get_ops()
        if op.get_type_name() == "Constant"
    }
    assert types & {"i4", "u4"}


# ----------------------------------------------------------------- end to end


def _blocking_shim(folder: Path, modules: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for module in modules:
        (folder / f"{module}.py").write_text(
            f"raise ImportError('{module} is not on the device')\n"
        )
    return folder


def _run_bundle(bundle: Path, shim: Path, texts: list[str]) -> list[list[float]]:
    result = subprocess.run(
        [sys.executable, str(bundle / "run.py"), *texts],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(shim)},
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["device"] == "CPU"
    embeddings: list[list[float]] = payload["results"]
    return embeddings


def test_cli_convert_to_an_openvino_bundle(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(tiny_bert),
        "--recipe", "openvino-fp32", "--recipe", "openvino-int8-weight",
        "--profile", "intel-n100", "--out", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verdict"] == "passed"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"]["target"] == "openvino"
    assert {a["recipe_id"] for a in manifest["attempts"]} == {
        "openvino-fp32",
        "openvino-int8-weight",
    }
    names = {p.name for p in out.iterdir()}
    assert {"openvino_model.xml", "openvino_model.bin", *TOKENIZER_FILES, "run.py"} <= names
    assert (out / "requirements.txt").read_text().splitlines()[1].startswith("openvino==")

    shim = _blocking_shim(tmp_path / "shim", ["torch", "transformers", "optimum", "onnxruntime"])
    texts = ["hello world", "a second, longer sentence to embed"]
    with_ir = np.array(_run_bundle(out, shim, texts))
    assert with_ir.shape == (2, 32)
    assert np.isfinite(with_ir).all()

    # Without the tokenizer IR, run.py falls back to tokenizer.json and agrees.
    fallback = tmp_path / "no-tokenizer-ir"
    shutil.copytree(out, fallback)
    for name in TOKENIZER_FILES:
        (fallback / name).unlink()
    without_ir = np.array(_run_bundle(fallback, shim, texts))
    np.testing.assert_allclose(with_ir, without_ir, atol=1e-5)


def test_sensitivity_ranking_names_matmuls_and_keeps_them_in_float(
    ov: Setup, reference: np.ndarray
) -> None:
    from edgeport.backends.openvino import quantizers_by_matmul
    from edgeport.search import with_float_nodes

    full = ov.build("openvino-int8-static")

    def probe(session: Any) -> float:
        pooled = _pooled(session.run(ov.batch), ov.batch["attention_mask"])
        return float((pooled * reference).sum(axis=-1).min())

    ranking = ov.backend.rank_sensitive_nodes(full, probe, threads=1)
    assert ranking, "every quantised MatMul is scored"
    scores = [score for _, score in ranking]
    assert scores == sorted(scores)  # most harmful first
    worst = ranking[0][0]

    candidate = with_float_nodes(_candidate(ov.catalog.recipe("openvino-int8-static")), [worst])
    artifact = ov.backend.build(
        ov.exported, candidate, ov.info, ov.calibration, ov.workdir / "candidates" / "mixed"
    )
    import openvino as ov_runtime

    model = ov_runtime.Core().read_model(str(artifact.model_path))
    still_quantised = quantizers_by_matmul(model)
    assert worst not in still_quantised  # that MatMul now runs in float
    assert len(still_quantised) >= len(ranking) - 1
    assert any(worst in note for note in artifact.notes)


def test_saved_ir_does_not_depend_on_what_the_process_built_before(tmp_path: Path) -> None:
    """OpenVINO names unnamed nodes from a process-wide counter; bundles built after other
    work (a build's second pair, a Ray worker) must still be byte-identical."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from edgeport.backends.openvino_ir import save_ir

    def graph() -> ov.Model:
        x = ops.parameter([1, 4], np.float32, name="x")
        weight = ops.constant(np.arange(16, dtype=np.float32).reshape(4, 4))  # unnamed
        result = ops.relu(ops.matmul(x, weight, False, False))
        return ov.Model([result], [x], "tiny")

    save_ir(graph(), tmp_path / "first.xml")
    for _ in range(5):  # other work moves the counter on
        graph()
    save_ir(graph(), tmp_path / "second.xml")
    first = (tmp_path / "first.xml").read_text().replace("first", "")
    second = (tmp_path / "second.xml").read_text().replace("second", "")
    assert first == second
    assert (tmp_path / "first.bin").read_bytes() == (tmp_path / "second.bin").read_bytes()


def test_host_checks_bound_the_kernel_caches_and_bundles_keep_openvinos_defaults() -> None:
    """Validation runs a model on a hundred shapes; OpenVINO would keep every shape's
    kernels (~3 MB each for MiniLM). The bundle's runner is not limited."""
    import os

    from edgeport.backends import openvino as backend
    from edgeport.runners import ondevice

    assert backend.compile_config("CPU", 2)["CPU_RUNTIME_CACHE_CAPACITY"] > 0
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]  # set before any compile
    assert "CPU_RUNTIME_CACHE_CAPACITY" not in ondevice.openvino_config("CPU", 2)
