"""ONNX Runtime, decoder-only language models: KV-cache session and weight-only int4/int8.

Kept apart from the encoder code in onnxruntime.py; that module calls in here for
models whose graph has `past_key_values.*` inputs (optimum's `text-generation-with-past`
export: one graph that takes an empty past for the prompt and a filled one per token).

Weight-only quantisation follows docs/research/tiny-llama-int4.md: transformer MatMuls to
int4 MatMulNBits (round-to-nearest, blocks along the reduction axis), the recipe's
sensitive layers (`keep_int8_patterns`) and the output projection to 8-bit MatMulNBits,
and an untied token embedding table to int8 with one fp32 scale per row (plain
Gather/Cast/Mul). A head tied to the embeddings (one matrix, as in SmolLM2 and Qwen2) is
quantised once: the head's MatMulNBits blocks are also the embedding table, read by
GatherBlockQuantized (docs/research/onnxruntime-int4-decode.md). Every MatMulNBits gets
the recipe's resolved `accuracy_level` (4: int8 compute, the fast kernels on CPUs with
integer dot products; without it 8-bit MatMulNBits falls back to a slow path), and
MatMulNBits nodes that read the same input with the same kind of blocks (q+k, gate+up) are
packed into one. Recipes with `graph.transformer_fusion` first get each layer's attention
as one GroupQueryAttention node (`fuse_attention`), checked against the unfused graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.backends.weight_only import choose_group_size, compile_patterns, matches_any
from edgeport.errors import UnsupportedError
from edgeport.runners import ondevice

if TYPE_CHECKING:
    from edgeport.schemas import Quantization

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
DEFAULT_INT4_BLOCK = 128
DEFAULT_INT8_BLOCK = 256


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
                self._past.append((item.name, heads, head_dim, ondevice.onnx_dtype(item.type)))

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
        """Greedy decoding exactly as the bundle's run.py does it
        (ondevice.onnxruntime_greedy_tokens: the cache stays in ONNX Runtime's buffers)."""
        tokens = ondevice.onnxruntime_greedy_tokens(self._session, prompt_ids)
        return list(itertools.islice(tokens, max_new_tokens))


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


def _matmul_nbits(
    model: Any,
    nodes: Sequence[str],
    bits: int,
    block: int,
    symmetric: bool,
    accuracy_level: int | None = None,
) -> Any:
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
        accuracy_level=accuracy_level,
        nodes_to_exclude=[name for name in everything if name not in wanted],
        algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=symmetric, bits=bits, accuracy_level=accuracy_level
        ),
    )
    quantizer.process()
    return quantizer.model.model


class TiedHead:
    """An output projection that shares its matrix with the token embedding Gather."""

    def __init__(self, head: str, gather: str, table: str, hidden: int) -> None:
        self.head, self.gather, self.table, self.hidden = head, gather, table, hidden


def _consumers(graph: Any, name: str) -> list[Any]:
    return [node for node in graph.node if name in node.input]


def _untie_head(model: Any) -> TiedHead | None:
    """Find a head tied to the embedding table and give it its own [hidden, vocab] weight.

    optimum writes a tied head as MatMul(hidden, Transpose(embed_tokens.weight)); other
    exporters write a transposed copy of the table. Either way the head becomes a plain
    weight MatMul the quantiser can take; `_share_embedding` then points the Gather at the
    head's quantised blocks, so the file still holds the matrix once.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    tables = {
        node.input[0]: node
        for node in graph.node
        if node.op_type == "Gather"
        and node.input[0] in initializers
        and next((a.i for a in node.attribute if a.name == "axis"), 0) == 0
        and len(initializers[node.input[0]].dims) == 2
        and initializers[node.input[0]].data_type == TensorProto.FLOAT
    }
    for node in graph.node:
        if node.op_type != "MatMul" or not any(out in outputs for out in node.output):
            continue
        weight = node.input[1]
        source = producers.get(weight)
        table: str | None = None
        if source is not None and source.op_type == "Transpose" and source.input[0] in tables:
            perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), [1, 0])
            table = source.input[0] if perm == [1, 0] else None
        elif weight in initializers:
            copy = initializers[weight]
            for name in tables:
                dims = list(initializers[name].dims)
                if list(copy.dims) == dims[::-1] and np.array_equal(
                    numpy_helper.to_array(copy), numpy_helper.to_array(initializers[name]).T
                ):
                    table = name
                    break
        if table is None:
            continue
        matrix = numpy_helper.to_array(initializers[table])
        untied = f"{table}.lm_head"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix.T), untied))
        node.input[1] = untied
        if source is not None and source.op_type == "Transpose" and not _consumers(graph, weight):
            graph.node.remove(source)
        elif weight in initializers and not _consumers(graph, weight):
            graph.initializer.remove(initializers[weight])
        return TiedHead(node.name, tables[table].name, table, int(matrix.shape[1]))
    return None


def _share_embedding(model: Any, tied: TiedHead) -> str | None:
    """Replace the embedding Gather by GatherBlockQuantized over the head's MatMulNBits blocks.

    MatMulNBits stores the head as B[vocab, k_blocks, blob] with scales[vocab, k_blocks]:
    row v of B is embedding row v, blocked along the hidden axis exactly as
    GatherBlockQuantized (quantize_axis 2) reads it. The scales get an Unsqueeze to
    [vocab, k_blocks, 1] (GatherBlockQuantized wants the data's rank), folded by ONNX
    Runtime at load. Returns why it could not, or None when shared.
    """
    from onnx import AttributeProto, helper, numpy_helper

    graph = model.graph
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith(tied.head)),
        None,
    )
    gather = next((n for n in graph.node if n.name == tied.gather), None)
    if head is None or gather is None:
        return "lm_head was not quantised"
    attrs = {a.name: a.i for a in head.attribute if a.type == AttributeProto.INT}
    bits, block, k = attrs.get("bits", 4), attrs.get("block_size", 0), attrs.get("K", 0)
    if len(head.input) > 3 and head.input[3]:
        return "asymmetric head blocks (zero points) are not shared"
    if k != tied.hidden or block <= 0 or k % block:
        return f"block {block} does not divide hidden size {tied.hidden}"
    opset = next((o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}), 13)
    base = tied.table
    ids, out = gather.input[1], gather.output[0]
    scales = f"{base}.scales3"
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), f"{base}.axis2"))
        unsqueeze = helper.make_node(
            "Unsqueeze", [head.input[2], f"{base}.axis2"], [scales], name=f"{gather.name}/scales"
        )
    else:
        unsqueeze = helper.make_node(
            "Unsqueeze", [head.input[2]], [scales], axes=[2], name=f"{gather.name}/scales"
        )
    rank = next((len(i.type.tensor_type.shape.dim) for i in graph.input if i.name == ids), None)
    new_nodes = [
        unsqueeze,
        helper.make_node(
            "GatherBlockQuantized",
            [head.input[1], ids, scales],
            [f"{base}.blocks"],
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            quantize_axis=2,
            gather_axis=0,
            name=f"{gather.name}/quantized",
        ),
    ]
    if rank == 2:  # input_ids [batch, sequence]: copy both, merge the blocks
        graph.initializer.append(
            numpy_helper.from_array(np.array([0, 0, k], np.int64), f"{base}.shape")
        )
        shape = f"{base}.shape"
    else:
        graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), f"{base}.k"))
        new_nodes += [
            helper.make_node("Shape", [ids], [f"{base}.ids_shape"], name=f"{gather.name}/shape"),
            helper.make_node(
                "Concat",
                [f"{base}.ids_shape", f"{base}.k"],
                [f"{base}.shape"],
                axis=0,
                name=f"{gather.name}/concat",
            ),
        ]
        shape = f"{base}.shape"
    new_nodes.append(
        helper.make_node("Reshape", [f"{base}.blocks", shape], [out], name=f"{gather.name}/merge")
    )
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)
    if not _consumers(graph, base):
        table = next(i for i in graph.initializer if i.name == base)
        graph.initializer.remove(table)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return None


# --------------------------------------------------------------------------- attention

# Architectures whose attention is HF's standard rotary GQA: rotate_half RoPE on q and k,
# repeat_kv, causal softmax(q k^T / sqrt(head_dim)) v, and past/present caches in BNSH.
GQA_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})


def _rope_caches(config: Mapping[str, Any], head_dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """cos/sin [max_positions, head_dim / 2] exactly as transformers computes them, or None
    for position-dependent scalings GroupQueryAttention's fixed caches cannot express."""
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in {"default", "linear", "llama3", "yarn"} or config.get("partial_rotary_factor"):
        return None
    if kind == "default":
        base = float(config.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (
            base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        )
        scaling = 1.0
    else:
        try:
            hf_config = AutoConfig.for_model(**dict(config))
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](hf_config, torch.device("cpu"))
        except (KeyError, TypeError, ValueError):
            return None
    length = int(config.get("max_position_embeddings") or 2048)
    angles = torch.outer(torch.arange(length, dtype=torch.int64).float(), inv_freq.float())
    return (
        (torch.cos(angles) * scaling).numpy().astype(np.float32),
        (torch.sin(angles) * scaling).numpy().astype(np.float32),
    )


def _scope_output(graph: Any, scope: str) -> str | None:
    """The one tensor a node-name scope (`.../q_proj/`) hands to nodes outside it."""
    inside = [n for n in graph.node if n.name.startswith(scope)]
    produced = {out for n in inside for out in n.output}
    used_outside = {
        name for n in graph.node if not n.name.startswith(scope) for name in n.input
    } | {o.name for o in graph.output}
    found = sorted(produced & used_outside)
    return found[0] if len(found) == 1 else None


def _prune(graph: Any) -> None:
    """Drop nodes and initializers nothing reaches the graph outputs through."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    kept_ids = {id(n) for n in keep}
    for node in [n for n in graph.node if id(n) not in kept_ids]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in needed]:
        graph.initializer.remove(init)


def fuse_attention(model: Any, config: Mapping[str, Any]) -> str:
    """Each layer's attention (RoPE, repeat_kv, masked softmax, past/present concat: about
    70 small nodes in optimum's export) as one GroupQueryAttention node. Returns a note.

    Decoding runs the graph once per token, and for a small model ONNX Runtime's cost per
    node, not the weights, dominates: this is what brings int4 MatMulNBits' speed through.
    The boundary tensors are found by HF's module names (q_proj, k_proj, v_proj, o_proj),
    the inputs and outputs of the graph by optimum's names; the caller checks the fused
    graph against the original before keeping it.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    model_type = str(config.get("model_type", ""))
    if model_type not in GQA_MODEL_TYPES:
        return f"attention not fused: {model_type or 'unknown'} is not a standard rotary GQA model"
    if config.get("sliding_window") and config.get("use_sliding_window", model_type == "mistral"):
        return "attention not fused: sliding-window attention"
    inputs = {i.name for i in graph.input}
    if "attention_mask" not in inputs:
        return "attention not fused: the graph has no attention_mask"
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    caches = _rope_caches(config, head_dim)
    if caches is None:
        return "attention not fused: rotary scaling GroupQueryAttention cannot express"
    layers = int(config["num_hidden_layers"])
    plans = []
    for layer in range(layers):
        scope = f"/model/layers.{layer}/self_attn/"
        q, k, v = (_scope_output(graph, f"{scope}{name}_proj/") for name in ("q", "k", "v"))
        o_proj = next((n for n in graph.node if n.name.startswith(f"{scope}o_proj/")), None)
        past_k, past_v = f"{PAST_PREFIX}{layer}.key", f"{PAST_PREFIX}{layer}.value"
        present_k, present_v = f"{PRESENT_PREFIX}{layer}.key", f"{PRESENT_PREFIX}{layer}.value"
        outputs = {o.name for o in graph.output}
        if (
            q is None
            or k is None
            or v is None
            or o_proj is None
            or not {past_k, past_v} <= inputs
            or not {present_k, present_v} <= outputs
        ):
            return f"attention not fused: layer {layer} does not have the expected layout"
        plans.append((layer, q, k, v, o_proj.input[0], past_k, past_v, present_k, present_v))

    prefix = "/model/gqa"
    graph.initializer.extend(
        [
            numpy_helper.from_array(caches[0], f"{prefix}/cos_cache"),
            numpy_helper.from_array(caches[1], f"{prefix}/sin_cache"),
            numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/axis1"),
            numpy_helper.from_array(np.array(1, np.int64), f"{prefix}/one"),
        ]
    )
    shared = [
        helper.make_node(
            "ReduceSum", ["attention_mask", f"{prefix}/axis1"], [f"{prefix}/lengths"],
            keepdims=0, name=f"{prefix}/ReduceSum",
        ),
        helper.make_node(
            "Sub", [f"{prefix}/lengths", f"{prefix}/one"], [f"{prefix}/last"], name=f"{prefix}/Sub"
        ),
        helper.make_node(
            "Cast", [f"{prefix}/last"], [f"{prefix}/seqlens_k"], to=TensorProto.INT32,
            name=f"{prefix}/Cast",
        ),
        helper.make_node("Shape", ["attention_mask"], [f"{prefix}/mask_shape"], start=1, end=2,
                         name=f"{prefix}/Shape"),
        helper.make_node(
            "Squeeze", [f"{prefix}/mask_shape"], [f"{prefix}/total64"], name=f"{prefix}/Squeeze"
        ),
        helper.make_node(
            "Cast", [f"{prefix}/total64"], [f"{prefix}/total"], to=TensorProto.INT32,
            name=f"{prefix}/Cast_1",
        ),
    ]  # fmt: skip
    position = "position_ids" if "position_ids" in inputs else ""
    fused = []
    for layer, q, k, v, attended, past_k, past_v, present_k, present_v in plans:
        for node in list(graph.node):  # the old producers of the tensors GQA now writes
            if set(node.output) & {attended, present_k, present_v}:
                graph.node.remove(node)
        fused.append(
            helper.make_node(
                "GroupQueryAttention",
                [q, k, v, past_k, past_v, f"{prefix}/seqlens_k", f"{prefix}/total",
                 f"{prefix}/cos_cache", f"{prefix}/sin_cache", position],
                [attended, present_k, present_v],
                domain="com.microsoft",
                num_heads=heads,
                kv_num_heads=kv_heads,
                do_rotary=1,
                rotary_interleaved=0,
                name=f"/model/layers.{layer}/self_attn/GroupQueryAttention",
            )
        )  # fmt: skip
    # Producers first: the shared nodes read only graph inputs, each GQA node reads its
    # layer's projections; place each GQA right after the last of its inputs' producers.
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(shared)
    pending = {id(n): n for n in fused}
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    available |= {out for n in shared for out in n.output}
    for node in nodes:
        graph.node.append(node)
        available.update(node.output)
        for gqa in list(pending.values()):
            if all(not name or name in available for name in gqa.input):
                graph.node.append(gqa)
                available.update(gqa.output)
                del pending[id(gqa)]
    if pending:
        raise UnsupportedError("attention fusion: a GroupQueryAttention input has no producer")
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _prune(graph)
    return f"attention: {layers} layers fused into GroupQueryAttention (RoPE in the kernel)"


FUSION_TOLERANCE = 1e-4  # max |fused - original| / max |original| over the logits


def fused_attention_error(
    original: Path, fused: Path, feeds: Sequence[Mapping[str, np.ndarray]], steps: int = 4
) -> float:
    """Largest relative logits difference between two decoder graphs: full windows with an
    empty cache, then `steps` tokens decoded through the cache after the first window."""
    options = None
    first, second = OnnxDecoderSession(original, options), OnnxDecoderSession(fused, options)
    worst = 0.0

    def compare(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))

    for batch in feeds:
        worst = max(worst, compare(first.run(batch)["logits"], second.run(batch)["logits"]))
    if feeds:
        ids = np.asarray(feeds[0]["input_ids"], dtype=np.int64)[:, :8]
        mask = np.ones_like(ids)
        past_a, past_b, length = first.empty_past(1), second.empty_past(1), 0
        for _ in range(steps):
            logits_a, past_a = first.step(ids, mask, past_a, length)
            logits_b, past_b = second.step(ids, mask, past_b, length)
            worst = max(worst, compare(logits_a, logits_b))
            length = mask.shape[1]
            ids = np.array([[int(logits_a[0, -1].argmax())]], dtype=np.int64)
            mask = np.ones((1, length + 1), dtype=np.int64)
    return worst


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


def pack_siblings(model: Any) -> int:
    """Merge MatMulNBits nodes that read the same input with the same kind of blocks (q and
    k, gate and up) into one node over the concatenated weights, then Split its output.

    Exact: each output column is computed from its own blocks as before, and with int8
    compute the shared input is quantised the same way. One wider GEMV instead of two
    narrow ones: fewer kernel launches per token, better use of the threads. Returns the
    number of merged groups.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    if next((o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}), 0) < 13:
        return 0  # Split takes its sizes as an input from opset 13 on
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for node in graph.node:
        constants = [name for name in node.input[1:] if name]
        if (
            node.op_type != "MatMulNBits"
            or not all(name in initializers and uses[name] == 1 for name in constants)
            or any(name.startswith("g_idx") for name in constants)
            or len(node.input) > 4
        ):
            continue  # shared blocks (a tied head), bias or g_idx inputs: left alone
        attrs = tuple(sorted((a.name, a.i) for a in node.attribute if a.name != "N"))
        groups.setdefault((node.input[0], len(node.input), attrs), []).append(node)
    merged = 0
    for (_, _, attrs), nodes in groups.items():
        if len(nodes) < 2:
            continue
        widths = [next(a.i for a in n.attribute if a.name == "N") for n in nodes]
        name = f"{nodes[0].name}/packed"
        inputs = [nodes[0].input[0]]
        for position in range(1, len(nodes[0].input)):
            parts = [numpy_helper.to_array(initializers[n.input[position]]) for n in nodes]
            packed = f"{name}/input{position}"
            graph.initializer.append(numpy_helper.from_array(np.concatenate(parts), packed))
            inputs.append(packed)
            for n in nodes:
                graph.initializer.remove(initializers[n.input[position]])
        graph.initializer.append(
            numpy_helper.from_array(np.array(widths, np.int64), f"{name}/split")
        )
        new_nodes = [
            helper.make_node(
                "MatMulNBits", inputs, [f"{name}/output"], domain="com.microsoft", name=name,
                N=sum(widths), **dict(attrs),
            ),
            helper.make_node(
                "Split", [f"{name}/output", f"{name}/split"], [n.output[0] for n in nodes],
                axis=-1, name=f"{name}/Split",
            ),
        ]  # fmt: skip
        index = min(list(graph.node).index(n) for n in nodes)
        for n in nodes:
            graph.node.remove(n)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(index + offset, new)
        merged += 1
    return merged


def quantize_weight_only(source: Path, quantization: Quantization) -> tuple[Any, list[str]]:
    """The model with int4/int8 MatMulNBits weights, and notes on every precision chosen."""
    import onnx

    model = onnx.load(str(source))
    tied = _untie_head(model) if quantization.lm_head_precision != "fp32" else None
    matmuls = _weight_matmuls(model)
    if not matmuls:
        raise UnsupportedError("no MatMul with constant weights to quantise")
    head = _lm_head(model, matmuls)
    keep = compile_patterns(quantization.keep_int8_patterns)
    body = [(name, k) for name, k in matmuls if name != head]
    int4 = quantization.scheme == "int4-weight"
    symmetric = quantization.symmetric
    level = quantization.accuracy_level
    if int4:
        low = [(n, k) for n, k in body if not matches_any(n, keep)]
        high = [(n, k) for n, k in body if matches_any(n, keep)]
    else:
        low, high = [], list(body)
    head_bits = 4 if int4 and quantization.lm_head_precision == "int4" else 8

    notes = []
    compute = f", accuracy_level {level}" if level else ""
    if low:
        block, per_layer = choose_group_size(
            quantization.group_size or DEFAULT_INT4_BLOCK, [k for _, k in low]
        )
        model = _matmul_nbits(model, [n for n, _ in low], 4, block, symmetric, level)
        kind = "sym" if symmetric else "asym"
        pad = "; MatMulNBits pads the layers it does not divide" if per_layer else ""
        notes.append(f"{len(low)} MatMul weights int4 ({kind}, RTN, block {block}{compute}){pad}")
    if high:
        block8, _ = choose_group_size(
            quantization.int8_group_size or DEFAULT_INT8_BLOCK, [k for _, k in high]
        )
        model = _matmul_nbits(model, [n for n, _ in high], 8, block8, True, level)
        kept = [n for n, _ in high if n != head]
        why = (
            f" (kept at 8 bits by {', '.join(quantization.keep_int8_patterns)})"
            if int4 and kept
            else ""
        )
        notes.append(f"{len(kept)} MatMul weights 8-bit MatMulNBits, block {block8}{compute}{why}")
    shared: str | None = "no tied head"
    if head is None:
        notes.append("lm_head: no separate projection weight found (tied or fused); left as is")
    elif quantization.lm_head_precision == "fp32":
        notes.append(f"lm_head: fp32 ({head})")
    else:
        requested = quantization.group_size if head_bits == 4 else quantization.int8_group_size
        default = DEFAULT_INT4_BLOCK if head_bits == 4 else DEFAULT_INT8_BLOCK
        head_block, _ = choose_group_size(
            quantization.lm_head_group_size or requested or default, [dict(matmuls)[head]]
        )
        # Symmetric, as the 8-bit layers: a tied head's blocks then need no zero-point
        # tensor, which MatMulNBits and GatherBlockQuantized would pack differently.
        head_symmetric = quantization.head_symmetric or head_bits == 8 or tied is not None
        model = _matmul_nbits(model, [head], head_bits, head_block, head_symmetric, level)
        described = f"{head_bits}-bit MatMulNBits block {head_block}{compute}"
        if tied is None:
            notes.append(f"lm_head: {quantization.lm_head_precision}, {described} ({head})")
        else:
            shared = _share_embedding(model, tied)
            sharing = (
                "shared with the embedding lookup (GatherBlockQuantized, one copy)"
                if shared is None
                else f"not shared with the embeddings: {shared}"
            )
            notes.append(
                f"lm_head: {quantization.lm_head_precision}, tied to {tied.table}: "
                f"{described}, {sharing} ({head})"
            )
    if tied is not None and shared is None:
        notes.append(f"embeddings: the lm_head's {quantization.lm_head_precision} blocks")
    elif quantization.embedding_precision == "int8":
        tables = _int8_embedding(model)
        notes.append(
            f"embeddings: int8 with one scale per row ({', '.join(tables)})"
            if tables
            else "embeddings: fp32 (no standalone embedding table found)"
        )
    else:
        notes.append("embeddings: fp32")
    merged = pack_siblings(model)
    if merged:
        notes.append(
            f"{merged} groups of MatMulNBits sharing an input packed into one (q+k, gate+up)"
        )
    return model, notes
