"""ONNX Runtime, decoder-only language models: KV-cache session and weight-only int4/int8.

Kept apart from the encoder code in onnxruntime.py; that module calls in here for
models whose graph has `past_key_values.*` inputs (optimum's `text-generation-with-past`
export: one graph that takes an empty past for the prompt and a filled one per token).

Weight-only quantisation follows docs/research/tiny-llama-int4.md: transformer MatMuls to
int4 MatMulNBits (round-to-nearest, blocks along the reduction axis), the recipe's
sensitive layers (`keep_int8_patterns`) and the output projection to 8-bit MatMulNBits,
and the token embedding table to int8 with one fp32 scale per row (plain
Gather/Cast/Mul, since ORT's GatherBlockQuantized is 4-bit only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.backends.weight_only import choose_group_size, compile_patterns, matches_any
from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    from edgeport.schemas import Quantization

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
DEFAULT_INT4_BLOCK = 128
DEFAULT_INT8_BLOCK = 256
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def has_kv_cache(input_names: Sequence[str]) -> bool:
    return any(name.startswith(PAST_PREFIX) for name in input_names)


def graph_input_names(path: Path) -> tuple[str, ...]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return tuple(i.name for i in model.graph.input if i.name not in initializers)


def positions(mask: np.ndarray, past: int = 0) -> np.ndarray:
    """position_ids for the new tokens from an attention mask over past + new tokens."""
    cumulative = np.cumsum(mask, axis=-1) - 1
    return np.asarray(np.clip(cumulative, 0, None)[:, past:], dtype=np.int64)


class OnnxDecoderSession:
    """A KV-cache decoder behind the plain session interface.

    `run` takes input_ids (and optionally attention_mask) for a full window, with an empty
    past, and returns logits for every position; `generate` decodes greedily one token at
    a time through the cache, exactly as the bundle's run.py does.
    """

    def __init__(self, path: Path, options: Any) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        self.input_names = tuple(i.name for i in inputs)
        self.output_names = ("logits",)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._past: list[tuple[str, int, int, Any]] = []
        for item in inputs:
            if item.name.startswith(PAST_PREFIX):
                _, heads, _, head_dim = item.shape
                if not isinstance(heads, int) or not isinstance(head_dim, int):
                    raise UnsupportedError(f"{item.name}: KV heads and head size must be static")
                self._past.append((item.name, heads, head_dim, _DTYPES.get(item.type, np.float32)))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {
            name: np.zeros((batch, heads, 0, head_dim), dtype=dtype)
            for name, heads, head_dim, dtype in self._past
        }

    def step(
        self, input_ids: np.ndarray, mask: np.ndarray, past: Mapping[str, np.ndarray], length: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids, **past}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        if "position_ids" in self.input_names:
            feeds["position_ids"] = positions(mask, length)
        results = dict(zip(self._outputs, self._session.run(None, feeds), strict=True))
        present = {name: results[name.replace(PAST_PREFIX, PRESENT_PREFIX, 1)] for name in past}
        return results["logits"], present

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        logits, _ = self.step(ids, mask, self.empty_past(ids.shape[0]), 0)
        return {"logits": logits}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        ids = np.array([list(prompt_ids)], dtype=np.int64)
        mask = np.ones_like(ids)
        past = self.empty_past(1)
        length = 0
        generated: list[int] = []
        for _ in range(max_new_tokens):
            logits, past = self.step(ids, mask, past, length)
            length = mask.shape[1]
            token = int(logits[0, -1].argmax())
            generated.append(token)
            ids = np.array([[token]], dtype=np.int64)
            mask = np.ones((1, length + 1), dtype=np.int64)
        return generated


# --------------------------------------------------------------------------- weight-only


def _weight_matmuls(model: Any) -> list[tuple[str, int]]:
    """(node name, input channels) of every MatMul whose weight is a 2-D initializer."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        shape = shapes.get(node.input[1])
        if shape is not None and len(shape) == 2:
            found.append((node.name, int(shape[0])))
    return found


def _lm_head(model: Any, matmuls: Sequence[tuple[str, int]]) -> str | None:
    """The projection to the vocabulary: the weight MatMul that writes a graph output."""
    outputs = {o.name for o in model.graph.output}
    names = {name for name, _ in matmuls}
    for node in model.graph.node:
        if node.name in names and any(out in outputs for out in node.output):
            return str(node.name)
    return next((name for name, _ in matmuls if "lm_head" in name), None)


def _matmul_nbits(model: Any, nodes: Sequence[str], bits: int, block: int, symmetric: bool) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if not nodes:
        return model
    wanted = set(nodes)
    everything = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block,
        is_symmetric=symmetric,
        nodes_to_exclude=[name for name in everything if name not in wanted],
        algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=symmetric, bits=bits
        ),
    )
    quantizer.process()
    return quantizer.model.model


def _int8_embedding(model: Any) -> list[str]:
    """Token embedding Gathers on a 2-D float table -> int8 table and one scale per row."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    done = []
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in initializers:
            continue
        init = initializers[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            axis != 0
            or len(init.dims) != 2
            or init.data_type != TensorProto.FLOAT
            or init.dims[0] < 256
            or uses.get(init.name, 0) != 1
        ):
            continue
        table = numpy_helper.to_array(init).astype(np.float32)
        scale = (np.abs(table).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        base = init.name
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{base}.int8"),
                numpy_helper.from_array(scale, f"{base}.scale"),
            ]
        )
        ids, out = node.input[1], node.output[0]
        new_nodes = [
            helper.make_node(
                "Gather",
                [f"{base}.int8", ids],
                [f"{base}.q"],
                axis=0,
                name=f"{node.name}/int8_gather",
            ),
            helper.make_node(
                "Cast",
                [f"{base}.q"],
                [f"{base}.f"],
                to=TensorProto.FLOAT,
                name=f"{node.name}/int8_cast",
            ),
            helper.make_node(
                "Gather",
                [f"{base}.scale", ids],
                [f"{base}.s"],
                axis=0,
                name=f"{node.name}/scale_gather",
            ),
            helper.make_node(
                "Mul", [f"{base}.f", f"{base}.s"], [out], name=f"{node.name}/dequantize"
            ),
        ]
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(index + offset, new)
        done.append(base)
    return done


def quantize_weight_only(source: Path, quantization: Quantization) -> tuple[Any, list[str]]:
    """The model with int4/int8 MatMulNBits weights, and notes on every precision chosen."""
    import onnx

    model = onnx.load(str(source))
    matmuls = _weight_matmuls(model)
    if not matmuls:
        raise UnsupportedError("no MatMul with constant weights to quantise")
    head = _lm_head(model, matmuls)
    keep = compile_patterns(quantization.keep_int8_patterns)
    body = [(name, k) for name, k in matmuls if name != head]
    int4 = quantization.scheme == "int4-weight"
    symmetric = quantization.symmetric
    if int4:
        low = [(n, k) for n, k in body if not matches_any(n, keep)]
        high = [(n, k) for n, k in body if matches_any(n, keep)]
    else:
        low, high = [], list(body)
    if head is not None and quantization.lm_head_precision != "fp32":
        head_k = dict(matmuls)[head]
        (low if int4 and quantization.lm_head_precision == "int4" else high).append((head, head_k))

    notes = []
    if low:
        block, per_layer = choose_group_size(
            quantization.group_size or DEFAULT_INT4_BLOCK, [k for _, k in low]
        )
        model = _matmul_nbits(model, [n for n, _ in low], 4, block, symmetric)
        kind = "sym" if symmetric else "asym"
        pad = "; MatMulNBits pads the layers it does not divide" if per_layer else ""
        notes.append(f"{len(low)} MatMul weights int4 ({kind}, RTN, block {block}){pad}")
    if high:
        block8, _ = choose_group_size(
            quantization.int8_group_size or DEFAULT_INT8_BLOCK, [k for _, k in high]
        )
        model = _matmul_nbits(model, [n for n, _ in high], 8, block8, True)
        kept = [n for n, _ in high if n != head]
        why = (
            f" (kept at 8 bits by {', '.join(quantization.keep_int8_patterns)})"
            if int4 and kept
            else ""
        )
        notes.append(f"{len(kept)} MatMul weights 8-bit MatMulNBits, block {block8}{why}")
    if head is None:
        notes.append("lm_head: no separate projection weight found (tied or fused); left as is")
    else:
        notes.append(f"lm_head: {quantization.lm_head_precision} ({head})")
    if quantization.embedding_precision == "int8":
        tables = _int8_embedding(model)
        notes.append(
            f"embeddings: int8 with one scale per row ({', '.join(tables)})"
            if tables
            else "embeddings: fp32 (no standalone embedding table found)"
        )
    else:
        notes.append("embeddings: fp32")
    return model, notes
