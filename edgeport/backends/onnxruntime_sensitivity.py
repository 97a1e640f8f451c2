"""Which quantised nodes of an ONNX Runtime QDQ model cost the most accuracy.

A QDQ model (`quantize_static(..., quant_format=QDQ)`) keeps the float graph and marks
each quantised tensor with a QuantizeLinear -> DequantizeLinear pair; weights are stored
in int8 and reach their node through a DequantizeLinear. To score one node, every other
pair is bypassed (its consumers read the float tensor the QuantizeLinear was given)
while the node's own pairs stay: those on its inputs and those on its outputs, which is
what `nodes_to_exclude` removes when the node is kept in float. Weights stored quantised
cannot be bypassed back to their original values: the other nodes get their int8
weights dequantised once in numpy, so each score tells what quantising that node's
activations adds to int8 weights everywhere.

The names returned are the node names of the quantised graph, which QDQ keeps from the
float graph: `quantize_static`'s `nodes_to_exclude` takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# The compute nodes whose int8 kernels are the point of quantising, as ranked; the pairs
# QDQ puts around other ops (Softmax, Reshape, Add) belong to the compute node they feed
# or that feeds them.
RANKED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention"})
# Protobuf caps a serialised model at 2 GB; larger models are not ranked.
_MAX_IN_MEMORY_BYTES = 1_800_000_000
_QUANTIZE = "QuantizeLinear"
_DEQUANTIZE = "DequantizeLinear"


@dataclass(frozen=True)
class QdqGraph:
    """What bypassing needs to know about a QDQ model, worked out once."""

    model: Any  # onnx.ModelProto
    skeleton: Any  # the same without nodes and initialisers, cheap to copy
    # DequantizeLinear output -> the float tensor its consumers read once bypassed.
    float_of: Mapping[str, str]
    # Float weights dequantised in numpy (TensorProtos), added where a bypass reads them.
    float_weights: Mapping[str, Any]
    # Each ranked node: the DequantizeLinear outputs of its own pairs.
    own_inputs: Mapping[str, frozenset[str]]
    own_outputs: Mapping[str, frozenset[str]]


def quantised_nodes(graph: QdqGraph) -> list[str]:
    """The ranked nodes that read a DequantizeLinear, in graph order."""
    return list(graph.own_inputs)


def analyse(model: Any, op_types: Collection[str] = RANKED_OP_TYPES) -> QdqGraph:
    """The QDQ pairs of `model` (onnx.ModelProto) and the nodes they belong to."""
    from onnx import numpy_helper

    nodes = list(model.graph.node)
    producers = {output: node for node in nodes for output in node.output if output}
    initializers = {init.name: init for init in model.graph.initializer}

    float_of: dict[str, str] = {}
    float_weights: dict[str, Any] = {}
    for node in nodes:
        if node.op_type != _DEQUANTIZE or not node.output or not node.output[0]:
            continue
        source = node.input[0]
        producer = producers.get(source)
        if producer is not None and producer.op_type == _QUANTIZE:
            float_of[node.output[0]] = producer.input[0]
        elif source in initializers:
            weight = _dequantised(node, initializers, numpy_helper.to_array)
            if weight is not None:
                name = f"{node.output[0]}/float"
                float_weights[name] = numpy_helper.from_array(weight, name)
                float_of[node.output[0]] = name
    # A QuantizeLinear may read a DequantizeLinear (requantisation): go to the float end.
    for name in float_of:
        seen = {name}
        while float_of[name] in float_of and float_of[name] not in seen:
            seen.add(float_of[name])
            float_of[name] = float_of[float_of[name]]

    dequantised_from: dict[str, list[str]] = {}  # QuantizeLinear input -> its DQ outputs
    for node in nodes:
        if node.op_type == _DEQUANTIZE and node.input[0] in producers:
            producer = producers[node.input[0]]
            if producer.op_type == _QUANTIZE:
                dequantised_from.setdefault(producer.input[0], []).append(node.output[0])

    own_inputs: dict[str, frozenset[str]] = {}
    own_outputs: dict[str, frozenset[str]] = {}
    for node in nodes:
        if node.op_type not in op_types or not node.name:
            continue
        reads = frozenset(name for name in node.input if name in float_of)
        if not reads:
            continue
        own_inputs[node.name] = reads
        own_outputs[node.name] = frozenset(
            dq for output in node.output for dq in dequantised_from.get(output, [])
        )
    skeleton = type(model)()
    skeleton.CopyFrom(model)
    del skeleton.graph.node[:]
    del skeleton.graph.initializer[:]
    return QdqGraph(model, skeleton, float_of, float_weights, own_inputs, own_outputs)


def _dequantised(
    node: Any, initializers: Mapping[str, Any], to_array: Callable[[Any], np.ndarray]
) -> np.ndarray | None:
    """A DequantizeLinear of constant inputs, computed; None when it is not plain
    per-tensor or per-axis (blocked quantisation, or scales that are not constants)."""
    import numpy as np

    if any(attribute.name == "block_size" for attribute in node.attribute):
        return None
    names = [*node.input, "", ""][:3]
    if any(name and name not in initializers for name in names):
        return None
    quantised = to_array(initializers[names[0]])
    scale = to_array(initializers[names[1]])
    zero_point = to_array(initializers[names[2]]) if names[2] else np.zeros((), quantised.dtype)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and quantised.ndim > 0:
        shape = [1] * quantised.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    values = (quantised.astype(np.float64) - zero_point.astype(np.float64)) * scale
    return values.astype(scale.dtype)  # type: ignore[no-any-return]


def keep_only(graph: QdqGraph, node_name: str | None) -> Any:
    """A copy of the model where only `node_name`'s QDQ pairs remain (none for None)."""
    import onnx

    own_inputs = graph.own_inputs.get(node_name, frozenset()) if node_name else frozenset()
    own_outputs = graph.own_outputs.get(node_name, frozenset()) if node_name else frozenset()
    outputs = {output.name for output in graph.model.graph.output}

    def source(name: str, consumer: str) -> str:
        if name not in graph.float_of or name in own_outputs:
            return name
        if consumer == node_name and name in own_inputs:
            return name
        return graph.float_of[name]

    nodes = []
    for node in graph.model.graph.node:
        if node.op_type == _DEQUANTIZE and node.output[0] in outputs:
            dequantised = node.output[0]
            if dequantised in graph.float_of and dequantised not in own_outputs:
                # A graph output stays where it is, now computed in float.
                nodes.append(
                    onnx.helper.make_node(
                        "Identity",
                        [graph.float_of[dequantised]],
                        [dequantised],
                        f"{node.name}/float",
                    )
                )
                continue
        rewired = onnx.NodeProto()
        rewired.CopyFrom(node)
        for index, name in enumerate(node.input):
            rewired.input[index] = source(name, node.name)
        nodes.append(rewired)

    live = _live_nodes(nodes, outputs)
    used = {name for node in live for name in _reads(node)} | outputs
    model = onnx.ModelProto()
    model.CopyFrom(graph.skeleton)
    model.graph.node.extend(live)
    model.graph.initializer.extend(
        init for init in graph.model.graph.initializer if init.name in used
    )
    model.graph.initializer.extend(
        tensor for name, tensor in graph.float_weights.items() if name in used
    )
    return model


def _reads(node: Any) -> set[str]:
    """Tensors a node reads, including names its subgraphs take from the outer scope."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        subgraphs = [attribute.g] if attribute.HasField("g") else []
        for subgraph in [*subgraphs, *attribute.graphs]:
            names |= {name for inner in subgraph.node for name in _reads(inner)}
    return names


def _live_nodes(nodes: list[Any], outputs: Iterable[str]) -> list[Any]:
    """The nodes that contribute to the graph's outputs (ONNX graphs are sorted)."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(output in needed for output in node.output):
            live.append(node)
            needed |= _reads(node)
    return live[::-1]


def rank_sensitive_nodes(
    model_path: Path, probe: Callable[[Any], float], session: Callable[[bytes], Any]
) -> list[tuple[str, float]]:
    """(node name, probe score with only that node's QDQ pairs), lowest score first.

    `session` makes an inference session from a serialised model, with the settings
    validation uses (the backend's OnnxSession).

    Empty for a model without QDQ pairs around ranked ops (QOperator, dynamic or float
    models) and for models too large to serialise in memory.
    """
    import onnx

    model = onnx.load(str(model_path))
    if model.ByteSize() > _MAX_IN_MEMORY_BYTES:
        return []
    graph = analyse(model)
    scores = []
    for name in quantised_nodes(graph):
        scores.append((name, float(probe(session(keep_only(graph, name).SerializeToString())))))
    return sorted(scores, key=lambda item: item[1])
