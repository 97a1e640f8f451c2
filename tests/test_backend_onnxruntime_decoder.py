"""ONNX Runtime decoders: tied embeddings quantised once and shared, MatMulNBits' accuracy
level resolved from the device profile, and greedy decoding through IO binding.

Tiny random Llama/Qwen2 models with `tie_word_embeddings=True` (one matrix for the token
embeddings and the output head, as in SmolLM2 and Qwen2); the real-shape model lives in
scripts/benchmark_llm.py only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_LLAMA, build_tiny_decoder

from edgeport.backends import ExportedModel
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import for_device
from edgeport.validate import ReferenceModel

CATALOG = load_catalog()
VOCAB, HIDDEN = 4096, 64

pytestmark = pytest.mark.skipif(
    not (TINY_LLAMA / "tokenizer.json").is_file(), reason=f"{TINY_LLAMA} is absent"
)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tied_export(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, ExportedModel]:
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    model_type = str(request.param)
    folder = build_tiny_decoder(
        tmp_path_factory.mktemp(f"tied-{model_type}"), model_type, tied=True
    )
    info = inspect_model(resolve(str(folder)))
    exported = OnnxRuntimeBackend().export(
        info, tmp_path_factory.mktemp("export"), trust_remote_code=False
    )
    return info, exported


def _quantize(exported: ExportedModel, recipe_id: str, profile: str) -> tuple[Any, list[str]]:
    from edgeport.backends.onnxruntime_decoder import quantize_weight_only

    recipe = for_device(CATALOG.recipe(recipe_id), CATALOG.profile(profile))
    return quantize_weight_only(exported.directory / exported.model_file, recipe.quantize)


def _attrs(node: Any) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def _dequantize(blocks: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' B[vocab, k_blocks, blob] and scales[vocab, k_blocks] -> [vocab, hidden]."""
    if bits == 4:
        low, high = blocks & 0x0F, blocks >> 4
        values = np.stack([low, high], axis=-1).reshape(blocks.shape[0], blocks.shape[1], -1)
    else:
        values = blocks
    centred = values.astype(np.float32) - 2 ** (bits - 1)  # symmetric: the default zero point
    return np.asarray((centred * scales[..., None]).reshape(blocks.shape[0], -1))


@pytest.mark.parametrize("recipe_id", ["onnx-int4-weight", "onnx-int8-weight"])
def test_tied_head_is_quantised_once_and_shared_exactly(
    tied_export: tuple[Any, ExportedModel], recipe_id: str, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    info, exported = tied_export
    model, notes = _quantize(exported, recipe_id, "raspberry-pi-5")
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    # No float copy of the table is left, and exactly one quantised copy of it.
    assert not [
        i
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) >= VOCAB * HIDDEN
    ]
    tables = [i for i in graph.initializer if i.dims and i.dims[0] == VOCAB and len(i.dims) == 3]
    assert len(tables) == 1
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] == head.input[1] == tables[0].name
    assert _attrs(head)["bits"] == _attrs(gather)["bits"] == 8  # the recipes' lm_head: int8
    assert _attrs(head)["block_size"] == _attrs(gather)["block_size"]
    assert not [n for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers]
    text = "; ".join(notes)
    assert "shared with the embedding lookup" in text and "embeddings: the lm_head's int8" in text

    # The lookup returns exactly the head's dequantised rows.
    embedded = next(n for n in graph.node if n.input and n.input[0] == gather.output[0]).output[0]
    graph.output.append(onnx.helper.make_tensor_value_info(embedded, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 5, 17, 4095, 17]], dtype=np.int64)
    feeds: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
    }
    for item in session.get_inputs():
        if item.name.startswith("past_key_values."):
            feeds[item.name] = np.zeros((1, item.shape[1], 0, item.shape[3]), np.float32)
    rows = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True)
    )[embedded]
    blocks = numpy_helper.to_array(initializers[head.input[1]])
    scales = numpy_helper.to_array(initializers[head.input[2]]).reshape(blocks.shape[:2])
    table = _dequantize(blocks, scales, _attrs(head)["bits"])
    np.testing.assert_array_equal(rows[0], table[ids[0]])

    # ... which are the original embeddings to within one 8-bit step.
    from safetensors.numpy import load_file

    original = load_file(str(info.local_path / "model.safetensors"))["model.embed_tokens.weight"]
    step = np.abs(np.repeat(scales, _attrs(head)["block_size"], axis=1))  # one rounding step
    assert (np.abs(table - original) <= step * 1.001).all()  # the clipped extreme: one step


def test_tied_model_still_matches_pytorch(
    tied_export: tuple[Any, ExportedModel], tmp_path: Path
) -> None:
    import onnx

    from edgeport.backends.onnxruntime_decoder import OnnxDecoderSession

    info, exported = tied_export
    model, _ = _quantize(exported, "onnx-int8-weight", "raspberry-pi-5")
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    session = OnnxDecoderSession(path, None)
    reference = ReferenceModel(info, trust_remote_code=False)
    ids = np.arange(5, 69, dtype=np.int64)[None]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    expected = reference.run(feeds, ["logits"])["logits"]
    got = session.run(feeds)["logits"]
    cosine = (
        (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    )
    assert cosine.min() > 0.99


def test_accuracy_level_comes_from_the_profile_not_the_host(
    tied_export: tuple[Any, ExportedModel],
) -> None:
    levels = {}
    for profile in ("raspberry-pi-5", "x86-64-avx2", "raspberry-pi-4"):
        model, notes = _quantize(tied_export[1], "onnx-int4-weight", profile)
        found = {
            _attrs(n).get("accuracy_level", 0)
            for n in model.graph.node
            if n.op_type == "MatMulNBits"
        }
        assert len(found) == 1, found  # every MatMulNBits, lm_head included
        levels[profile] = found.pop()
        assert ("accuracy_level 4" in "; ".join(notes)) == (levels[profile] == 4)
    # Arm dotprod and x86 AVX2 have integer dot products; a Cortex-A72 does not.
    assert levels == {"raspberry-pi-5": 4, "x86-64-avx2": 4, "raspberry-pi-4": 0}


def test_io_bound_generation_matches_plain_steps(
    tied_export: tuple[Any, ExportedModel],
) -> None:
    from edgeport.backends.onnxruntime_decoder import OnnxDecoderSession

    _, exported = tied_export
    session = OnnxDecoderSession(exported.directory / exported.model_file, None)
    prompt = [10, 20, 30, 40]
    ids = np.array([prompt], dtype=np.int64)
    mask = np.ones_like(ids)
    past, length, plain = session.empty_past(1), 0, []
    for _ in range(8):
        logits, past = session.step(ids, mask, past, length)
        length = mask.shape[1]
        plain.append(int(logits[0, -1].argmax()))
        ids = np.array([[plain[-1]]], dtype=np.int64)
        mask = np.ones((1, length + 1), dtype=np.int64)
    assert session.generate(prompt, 8) == plain


def test_untied_models_keep_their_int8_embedding_rows(tmp_path: Path) -> None:
    """An untied head is not touched by the sharing code (tiny-llama-pydoc's layout)."""
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    folder = build_tiny_decoder(tmp_path / "untied")
    exported = OnnxRuntimeBackend().export(
        inspect_model(resolve(str(folder))), tmp_path / "out", trust_remote_code=False
    )
    model, notes = _quantize(exported, "onnx-int4-weight", "raspberry-pi-5")
    assert not [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    text = "; ".join(notes)
    assert "embeddings: int8 with one scale per row" in text and "tied" not in text


def test_attention_fusion_is_exact_and_removes_most_nodes(
    tied_export: tuple[Any, ExportedModel], tmp_path: Path
) -> None:
    import json

    import onnx

    from edgeport.backends.onnxruntime_decoder import fuse_attention, fused_attention_error

    _, exported = tied_export
    source = exported.directory / exported.model_file
    model = onnx.load(str(source))
    before = len(model.graph.node)
    config = json.loads((exported.directory / "config.json").read_text())
    note = fuse_attention(model, config)
    assert note.startswith("attention: 2 layers fused"), note
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2
    assert len(ops) * 4 < before
    assert "Softmax" not in ops and not any(name.startswith("Rotary") for name in ops)
    fused = tmp_path / "fused.onnx"
    onnx.save_model(model, str(fused))
    ids = np.arange(3, 60, dtype=np.int64)[None]
    error = fused_attention_error(source, fused, [{"input_ids": ids}], steps=6)
    assert error < 1e-5


def test_attention_fusion_declines_what_it_does_not_know(
    tied_export: tuple[Any, ExportedModel],
) -> None:
    import json

    import onnx

    from edgeport.backends.onnxruntime_decoder import fuse_attention

    _, exported = tied_export
    model = onnx.load(str(exported.directory / exported.model_file))
    config = json.loads((exported.directory / "config.json").read_text())
    count = len(model.graph.node)
    for change in (
        {"model_type": "gpt2"},
        {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
        {"num_hidden_layers": config["num_hidden_layers"] + 1},
    ):
        note = fuse_attention(model, {**config, **change})
        assert note.startswith("attention not fused"), change
        assert len(model.graph.node) == count


def test_matmuls_sharing_an_input_are_packed_exactly(
    tied_export: tuple[Any, ExportedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    from edgeport.backends import onnxruntime_decoder
    from edgeport.backends.onnxruntime_decoder import OnnxDecoderSession

    model, notes = _quantize(tied_export[1], "onnx-int4-weight", "raspberry-pi-5")
    assert "packed into one" in notes[-1]
    packed = [n for n in model.graph.node if n.name.endswith("/packed")]
    # Each of the 2 layers: gate+up, and q+k (4-bit; v_proj is 8-bit) or, in layer 0 where
    # everything is 8-bit, q+k+v.
    assert len(packed) == 2 * 2
    monkeypatch.setattr(onnxruntime_decoder, "pack_siblings", lambda model: 0)
    unpacked, _ = _quantize(tied_export[1], "onnx-int4-weight", "raspberry-pi-5")
    paths = []
    for name, graph in (("packed", model), ("unpacked", unpacked)):
        path = tmp_path / f"{name}.onnx"
        onnx.save_model(graph, str(path))
        paths.append(path)
    first, second = (OnnxDecoderSession(path, None) for path in paths)
    ids = np.arange(7, 50, dtype=np.int64)[None]
    np.testing.assert_array_equal(
        first.run({"input_ids": ids})["logits"], second.run({"input_ids": ids})["logits"]
    )
    assert first.generate([3, 4, 5], 6) == second.generate([3, 4, 5], 6)
