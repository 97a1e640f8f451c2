"""Decoder-only language models: KV-cache export, weight-only int4/int8, memory fit, validation,
bundle runner and verify.py. Fast tests use a random 2-layer Llama with the real tokenizer of
tiny-llama-pydoc; the slow ones convert the real model and check the issue's done criteria."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_LLAMA, build_tiny_decoder, run_cli

from edgeport.backends import Artifact, DecoderSession, ExportedModel
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import plan
from edgeport.schemas import ModelDims, ModelInfo, Tolerance
from edgeport.validate import Evaluation, ReferenceModel, compare, decoder_metrics

CATALOG = load_catalog()
ALL_TARGETS = frozenset(CATALOG.targets)
BLOCKED = ["torch", "transformers", "optimum"]


def _info(path: Path) -> ModelInfo:
    return inspect_model(resolve(str(path)))


def _artifact(exported: ExportedModel) -> Artifact:
    return Artifact(
        exported.directory,
        exported.model_file,
        (exported.model_file,),
        exported.input_names,
        exported.output_names,
    )


def _blocking_shim(folder: Path, modules: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for module in modules:
        (folder / f"{module}.py").write_text(
            f"raise ImportError('{module} is not on the device')\n"
        )
    return folder


# ----------------------------------------------------------------- planning (pure)


def _one_billion() -> ModelInfo:
    return ModelInfo(
        source="example/llama-1b",
        local_path=Path("/nonexistent"),
        task="text-generation-with-past",
        family="decoder",
        model_type="llama",
        parameter_count=1_100_000_000,
        weight_dtype="F32",
        weight_bytes=4_400_000_000,
        files=[],
        dims=ModelDims(
            hidden_size=2048,
            num_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=64,
            vocab_size=32000,
            max_positions=2048,
        ),
    )


def test_a_1b_model_gets_an_int4_plan_when_fp32_does_not_fit() -> None:
    result = plan(
        _one_billion(),
        CATALOG.profile("raspberry-pi-4"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
    )
    fp32 = next(d for d in result.dropped if d.recipe_id == "onnx-fp32")
    assert fp32.code == "memory"
    assert "MB" in fp32.reason and "raspberry-pi-4" in fp32.reason
    kept = [c.recipe.id for c in result.candidates]
    assert "onnx-int4-weight" in kept
    int4 = next(c for c in result.candidates if c.recipe.id == "onnx-int4-weight")
    assert "int4 weights" in int4.reason and "needs ~" in int4.reason
    # encoder-only recipes never apply to a language model
    assert "onnx-int8-dynamic" not in kept


def test_a_1b_model_does_not_fit_a_1_gb_board_at_all() -> None:
    result = plan(
        _one_billion(),
        CATALOG.profile("raspberry-pi-3-b-plus"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
    )
    assert not result.candidates
    int4 = next(d for d in result.dropped if d.recipe_id == "onnx-int4-weight")
    assert int4.code == "memory" and "614 MB" in int4.reason


# ----------------------------------------------------------------- metrics (pure)


def test_decoder_metrics() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(1, 20))
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    logits = rng.standard_normal((1, 20, 50)).astype(np.float32)
    evaluation = Evaluation(
        batches=[batch],
        reference=[{"logits": logits}],
        output_names=("logits",),
        calibration_samples=0,
        validation_samples=1,
        prompts=((1, 2),),
        reference_generations=((3, 4, 5, 6),),
    )
    info = ModelInfo(
        source="x",
        local_path=Path("/nonexistent"),
        task="text-generation-with-past",
        family="decoder",
        model_type="llama",
        parameter_count=1,
        weight_dtype="F32",
        weight_bytes=4,
        files=[],
    )
    tolerance = Tolerance(next_token_agreement_min=0.9, perplexity_increase_max=0.02)
    same = compare(
        info, evaluation, [{"logits": logits}], tolerance, decoder_metrics, [[3, 4, 5, 6]]
    )
    assert same.passed
    values = {m.name: m.value for m in same.metrics}
    assert values["next_token_agreement"] == 1.0
    assert abs(values["perplexity_increase"]) < 1e-9
    assert values["generation_match"] == 1.0
    noisy = logits + 3 * rng.standard_normal(logits.shape).astype(np.float32)
    worse = compare(
        info, evaluation, [{"logits": noisy}], tolerance, decoder_metrics, [[3, 4, 0, 0]]
    )
    assert not worse.passed
    assert {m.name: m.value for m in worse.metrics}["generation_match"] == 0.5
    assert any("next_token_agreement" in f for f in worse.failures)


# ----------------------------------------------------------------- ONNX Runtime


@pytest.fixture(scope="module")
def onnx_export(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelInfo, ExportedModel]:
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    info = _info(tiny_llama)
    exported = OnnxRuntimeBackend().export(
        info, tmp_path_factory.mktemp("ort-llm"), trust_remote_code=False
    )
    return info, exported


def test_model_info_infers_a_decoder(tiny_llama: Path) -> None:
    info = _info(tiny_llama)
    assert info.task == "text-generation-with-past" and info.family == "decoder"
    assert info.dims.num_key_value_heads == 2


def test_onnx_kv_cache_export_matches_pytorch(
    onnx_export: tuple[ModelInfo, ExportedModel],
) -> None:
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    info, exported = onnx_export
    assert "past_key_values.0.key" in exported.input_names
    assert "present.1.value" in exported.output_names
    session = OnnxRuntimeBackend().load(_artifact(exported), "CPUExecutionProvider", 1)
    assert isinstance(session, DecoderSession)
    reference = ReferenceModel(info, trust_remote_code=False)
    ids = np.arange(5, 45, dtype=np.int64)[None]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    expected = reference.run(feeds, ["logits"])["logits"]
    np.testing.assert_allclose(session.run(feeds)["logits"], expected, atol=1e-4)
    prompt = [10, 20, 30, 40]
    assert session.generate(prompt, 12) == reference.generate(prompt, 12)


def test_onnx_int4_recipe_keeps_sensitive_layers_8_bit(
    onnx_export: tuple[ModelInfo, ExportedModel], tmp_path: Path
) -> None:
    import onnx

    from edgeport.backends.onnxruntime_decoder import OnnxDecoderSession, quantize_weight_only

    _, exported = onnx_export
    recipe = CATALOG.recipe("onnx-int4-weight")
    model, notes = quantize_weight_only(exported.directory / exported.model_file, recipe.quantize)
    bits = {
        node.name: next(a.i for a in node.attribute if a.name == "bits")
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
    }
    eight = {name for name, b in bits.items() if b == 8}
    four = {name for name, b in bits.items() if b == 4}
    assert four and all("layers.0" not in n and "v_proj" not in n for n in four)
    assert any("layers.0" in n for n in eight) and any(
        "layers.1/self_attn/v_proj" in n for n in eight
    )
    assert any("lm_head" in n for n in eight)
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and "proj" in n.name]
    int8_tables = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_tables, "the embedding table is int8"
    text = "; ".join(notes)
    assert "lm_head: int8" in text and "embeddings: int8" in text and "block 64" in text
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    session = OnnxDecoderSession(path, None)
    logits = session.run({"input_ids": np.arange(1, 30, dtype=np.int64)[None]})["logits"]
    assert logits.shape == (1, 29, 4096) and np.isfinite(logits).all()
    assert len(session.generate([5, 6, 7], 8)) == 8


@pytest.mark.parametrize("model_type", ["gpt2", "qwen2"])
def test_other_decoder_architectures_export(model_type: str, tmp_path: Path) -> None:
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    folder = build_tiny_decoder(tmp_path / model_type, model_type)
    info = _info(folder)
    assert info.family == "decoder"
    backend = OnnxRuntimeBackend()
    exported = backend.export(info, tmp_path / "out", trust_remote_code=False)
    session = backend.load(_artifact(exported), "CPUExecutionProvider", 1)
    assert isinstance(session, DecoderSession)
    reference = ReferenceModel(info, trust_remote_code=False)
    ids = np.arange(3, 23, dtype=np.int64)[None]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    np.testing.assert_allclose(
        session.run(feeds)["logits"], reference.run(feeds, ["logits"])["logits"], atol=1e-4
    )
    assert session.generate([4, 5, 6], 6) == reference.generate([4, 5, 6], 6)


# ----------------------------------------------------------------- OpenVINO


@pytest.fixture(scope="module")
def openvino_export(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelInfo, ExportedModel]:
    pytest.importorskip("openvino")
    from edgeport.backends.openvino import OpenVinoBackend

    info = _info(tiny_llama)
    exported = OpenVinoBackend().export(
        info, tmp_path_factory.mktemp("ov-llm"), trust_remote_code=False
    )
    return info, exported


@pytest.mark.openvino
def test_openvino_stateful_export_and_int4_with_gptq(
    openvino_export: tuple[ModelInfo, ExportedModel],
) -> None:
    import openvino as ov

    from edgeport.backends.openvino import OpenVinoBackend
    from edgeport.backends.openvino_decoder import calibration_items

    info, exported = openvino_export
    backend = OpenVinoBackend()
    assert "beam_idx" in exported.input_names
    assert (exported.directory / "openvino_detokenizer.xml").is_file()
    session = backend.load(_artifact(exported), "CPU", 1)
    assert isinstance(session, DecoderSession)
    reference = ReferenceModel(info, trust_remote_code=False)
    prompt = [10, 20, 30, 40]
    assert session.generate(prompt, 10) == reference.generate(prompt, 10)

    ir = ov.Core().read_model(str(exported.directory / exported.model_file))
    calibration = [{"input_ids": np.arange(1, 40, dtype=np.int64)[None]}] * 2
    assert len(calibration_items(ir, calibration)) == 2
    quantization = CATALOG.recipe("openvino-int4-weight").quantize
    compressed, note = backend._compress_int4(ir, quantization, calibration)
    assert "GPTQ" in note and "kept at int8_asym" in note and "embeddings int8_asym" in note
    assert "lm_head int4 asym group 32 with GPTQ" in note
    assert _weight_types(compressed, "lm_head") == {"u4"}  # asymmetric: a zero point per group
    assert _weight_types(compressed, "embed_tokens") == {"u8"}
    assert _weight_types(compressed, "mlp.down_proj") == {"i4", "u8"}  # layer 0 stays 8-bit
    big_fp32 = [
        op
        for op in compressed.get_ops()
        if op.get_type_name() == "Constant"
        and op.get_element_type().get_type_name() == "f32"
        and int(np.prod(list(op.get_output_shape(0)))) >= 64 * 64
    ]
    assert not big_fp32, "every weight is compressed (second int8 pass)"


def _weight_types(model: Any, name: str) -> set[str]:
    """Element types of the weight constants of the nodes whose names contain `name`."""
    types = set()
    for op in model.get_ordered_ops():
        if name in op.get_friendly_name() and op.get_type_name() in {"MatMul", "Gather"}:
            frontier = [op.input(op.get_type_name() == "MatMul").get_source_output().get_node()]
            while frontier:
                node = frontier.pop()
                if node.get_type_name() == "Constant" and node.get_output_size() == 1:
                    kind = node.get_element_type().get_type_name()
                    types |= {kind} if kind in {"u4", "i4", "u8", "i8", "f32", "f16"} else set()
                    continue
                if node.get_type_name() in {"Convert", "Subtract", "Multiply", "Reshape"}:
                    frontier += [port.get_source_output().get_node() for port in node.inputs()]
    return {t for t in types if t not in {"f16", "f32"}} or types


@pytest.mark.openvino
def test_output_head_is_the_last_matmul_before_the_logits_and_only_with_constant_weights() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    from edgeport.backends.openvino_ir import output_head

    def graph(weight_is_constant: bool, output: str) -> Any:
        x = ops.parameter([1, 8], np.float32)
        hidden = ops.matmul(x, ops.constant(np.ones((8, 8), np.float32)), False, True)
        weight = ops.constant(np.ones((16, 8), np.float32))
        params = [x]
        if not weight_is_constant:
            weight = ops.parameter([16, 8], np.float32)
            params.append(weight)
        head = ops.matmul(ops.relu(hidden), weight, False, True)
        head.set_friendly_name("head")
        head.output(0).get_tensor().set_names({output})
        return ov.Model([head], params)

    assert output_head(graph(True, "logits")).get_friendly_name() == "head"
    # A head whose weights are not a constant is not mistaken for the layer before it.
    assert output_head(graph(False, "logits")) is None
    assert output_head(graph(True, "last_hidden_state")) is None


@pytest.mark.openvino
def test_openvino_int4_head_of_tied_embeddings_gets_its_own_weights(tmp_path: Path) -> None:
    """SmolLM2 and Qwen2 tie the output head to the token embeddings. The int4 recipe
    quantises the head to int4, which decoding reads every token, and keeps the embedding
    lookup int8: the head gets a copy of the table, and the model still decodes."""
    import openvino as ov

    from edgeport.backends.openvino import OpenVinoBackend
    from edgeport.backends.openvino_ir import untie_output_head
    from edgeport.runners import ondevice

    folder = build_tiny_decoder(tmp_path / "tied", tied=True)
    info = _info(folder)
    backend = OpenVinoBackend()
    exported = backend.export(info, tmp_path / "export", trust_remote_code=False)
    ir = ov.Core().read_model(str(exported.directory / exported.model_file))
    tables = [
        op
        for op in ir.get_ops()
        if op.get_type_name() == "Constant" and list(op.get_output_shape(0)) == [4096, 64]
    ]
    assert len(tables) == 1, "tied: one table for the embeddings and the head"
    untied = ir.clone()
    assert untie_output_head(untied) == ("__module.lm_head/aten::linear/MatMul", True)
    assert untie_output_head(untied)[1] is False, "a second call finds nothing to untie"

    calibration = [{"input_ids": np.arange(1, 40, dtype=np.int64)[None]}] * 2
    quantization = CATALOG.recipe("openvino-int4-weight").quantize
    compressed, note = backend._compress_int4(ir, quantization, calibration)
    assert "(untied from the embeddings)" in note
    assert _weight_types(compressed, "lm_head") == {"u4"}
    assert _weight_types(compressed, "embed_tokens") == {"u8"}
    model = ondevice.OpenVinoLanguageModel(compressed, "CPU", {"INFERENCE_NUM_THREADS": 1})
    tokens = model.tokens([10, 20, 30])
    assert all(0 <= next(tokens) < 4096 for _ in range(5))


def _matmuls(model: Any) -> int:
    return sum(op.get_type_name() == "MatMul" for op in model.get_ordered_ops())


@pytest.mark.openvino
def test_openvino_sibling_projections_merge_without_changing_the_logits(
    openvino_export: tuple[ModelInfo, ExportedModel],
) -> None:
    import openvino as ov

    from edgeport.backends.openvino_ir import fuse_sibling_projections
    from edgeport.runners import ondevice

    info, exported = openvino_export
    path = str(exported.directory / exported.model_file)
    merged_ir = ov.Core().read_model(path)
    before = _matmuls(merged_ir)
    layers = info.dims.num_layers or 0
    assert fuse_sibling_projections(merged_ir) == 2 * layers  # q+k+v and gate+up per layer
    assert _matmuls(merged_ir) == before - 3 * layers
    names = [op.get_friendly_name() for op in merged_ir.get_ordered_ops()]
    assert any("layers.0.self_attn.k_proj+q_proj+v_proj/" in name for name in names)

    window = np.arange(5, 37, dtype=np.int64)[None]
    logits = []
    for graph in (ov.Core().read_model(path), merged_ir):
        lm = ondevice.OpenVinoLanguageModel(graph, "CPU", ondevice.openvino_config("CPU", 1))
        lm.request.infer(lm.feeds(window, 0))
        logits.append(np.array(lm.request.get_tensor("logits").data))
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-4)


@pytest.mark.openvino
def test_openvino_decodes_generated_tokens_on_a_one_token_graph(
    openvino_export: tuple[ModelInfo, ExportedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeport.runners import ondevice

    info, exported = openvino_export
    path = exported.directory / exported.model_file
    config = ondevice.openvino_config("CPU", 1)
    prompt = [10, 20, 30, 40, 50]
    expected = ReferenceModel(info, trust_remote_code=False).generate(prompt, 12)

    lm = ondevice.OpenVinoLanguageModel(path, "CPU", config)
    step = lm.one_token_request()
    assert step is not lm.request
    ids = next(port for port in step.model_inputs if port.get_any_name() == "input_ids")
    assert ids.get_partial_shape().is_static and list(ids.get_shape()) == [1, 1]
    tokens = lm.tokens(prompt)
    assert [next(tokens) for _ in range(12)] == expected
    # A second sequence starts from an empty cache on both graphs.
    assert list(ondevice.greedy_tokens(lm.tokens(prompt), 12, stop=())) == expected
    assert list(ondevice.greedy_tokens(lm.tokens(prompt), 12, stop={expected[3]})) == (expected[:4])

    # A graph that cannot be reshaped to one token decodes on the prompt's graph.
    monkeypatch.setattr(ondevice, "ONE_TOKEN_SHAPES", {"input_ids": "not a shape"})
    fallback = ondevice.OpenVinoLanguageModel(path, "CPU", config)
    assert fallback.one_token_request() is fallback.request
    assert list(ondevice.greedy_tokens(fallback.tokens(prompt), 12, stop=())) == expected


def test_bundle_threads_never_exceed_the_cpus_here(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeport.runners import ondevice

    monkeypatch.setattr(ondevice, "available_cpus", lambda: 2)
    assert ondevice.spec_threads({"threads": 4}, None) == 2  # a 4-core profile on 2 cores
    assert ondevice.spec_threads({"threads": 1}, None) == 1
    assert ondevice.spec_threads({"threads": 4}, 8) == 8  # the user's --threads stands
    assert ondevice.spec_threads({}, None) == 0  # the runtime's own choice


# ----------------------------------------------------------------- end to end


def _generate(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    shim = _blocking_shim(tmp_path / "shim", BLOCKED)
    return subprocess.run(
        [sys.executable, str(bundle / "run.py"), "The with statement", "--max-new-tokens", "8"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(shim)},
        timeout=300,
    )


def test_convert_tiny_llama_for_onnxruntime(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(tiny_llama), "--profile", "raspberry-pi-5", "--out", str(out),
        "--recipe", "onnx-fp32", "--recipe", "onnx-int4-weight", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {a["recipe"] for a in payload["attempts"]} == {"onnx-fp32", "onnx-int4-weight"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"]["task"] == "text-generation-with-past"
    assert manifest["runtime"]["eos_token_ids"] == [2]
    if manifest["recipe"]["id"] == "onnx-int4-weight":
        # Resolved from the profile (Arm dotprod), recorded as it ran, whatever the host.
        assert manifest["recipe"]["quantize"]["accuracy_level"] == 4
    assert {"next_token_agreement", "perplexity_increase", "tokens_per_s"} <= set(
        manifest["metrics"]
    )
    assert manifest["golden"]["output_names"] == ["next_token"]
    generated = _generate(out, tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert "tokens/s" in generated.stderr and "time to first token" in generated.stderr
    shim = _blocking_shim(tmp_path / "shim2", [*BLOCKED, "tokenizers"])
    verified = subprocess.run(
        [sys.executable, str(out / "verify.py"), "--json", "--runs", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(shim)},
        timeout=300,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    golden = json.loads(verified.stdout)["golden"]
    assert golden["metrics"][0]["name"] == "next_token_agreement"


@pytest.mark.openvino
def test_convert_tiny_llama_for_openvino(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(tiny_llama), "--profile", "intel-n100", "--out", str(out),
        "--recipe", "openvino-fp32", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert {"openvino_model.xml", "openvino_detokenizer.xml", "run.py", "verify.py"} <= names
    generated = _generate(out, tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert "tokens/s" in generated.stderr
    verified = run_cli("verify", str(out), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


# ----------------------------------------------------------------- the real model (slow)

FP32_BYTES = 27_282_456  # tiny-llama-pydoc model.safetensors
GGUF_4BIT = ("gguf-iq4_xs", "gguf-q4_0", "gguf-q4_k_m")


def _done_criteria(profile: str, int4_recipes: set[str], tmp_path: Path) -> None:
    out = tmp_path / profile
    result = run_cli("convert", str(TINY_LLAMA), "--profile", profile, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["id"] in int4_recipes
    # Every 4-bit recipe the search ran passes the trained model's gate, whichever ships
    # (the others are skipped once a smaller one passed).
    for attempt in manifest["attempts"]:
        if attempt["recipe_id"] in int4_recipes and attempt["status"] != "skipped":
            assert attempt["status"] == "passed", attempt["recipe_id"]
            metrics = {m["name"]: m["value"] for m in attempt["validation"]["metrics"]}
            assert metrics["next_token_agreement"] >= 0.95, attempt["recipe_id"]
    model_files = [
        f
        for f in manifest["files"]
        if f["path"] in ("model.onnx", "model.gguf") or f["path"].startswith("openvino_model.")
    ]
    size = sum(f["bytes"] for f in model_files)
    assert size <= 0.20 * FP32_BYTES, size
    metrics = manifest["metrics"]
    # Validation texts are disjoint from the calibration texts (samples.py).
    assert metrics["next_token_agreement"] >= 0.95
    assert metrics["perplexity_increase"] <= 0.02
    generated = _generate(out, tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip()
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@pytest.mark.skipif(not TINY_LLAMA.is_dir(), reason="tiny-llama-pydoc is absent")
def test_tiny_llama_pydoc_for_raspberry_pi_5(tmp_path: Path) -> None:
    # ONNX Runtime and llama.cpp compete; the smallest 4-bit bundle that passes ships.
    _done_criteria("raspberry-pi-5", {"onnx-int4-weight", *GGUF_4BIT}, tmp_path)


@pytest.mark.slow
@pytest.mark.openvino
@pytest.mark.skipif(not TINY_LLAMA.is_dir(), reason="tiny-llama-pydoc is absent")
def test_tiny_llama_pydoc_for_intel_n100(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    # Both int4 bundles are ~0.195 of fp32; since issue 17 ONNX Runtime's is ~50 kB smaller
    # (fused attention: ~700 fewer nodes) and no slower, so the default `size` objective may
    # ship either; both must pass the gate.
    _done_criteria("intel-n100", {"openvino-int4-weight", "onnx-int4-weight", *GGUF_4BIT}, tmp_path)
