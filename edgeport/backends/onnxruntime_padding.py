"""Padding removal for ONNX Runtime: the fused-graph twin of openvino_padding.py.

After ONNX Runtime's transformer fusion, attention is one `Attention` contrib op per
layer; everything between two of them (MatMul, SkipLayerNormalization, BiasGelu, ...)
works on one token at a time. The rewrite packs the real tokens of a padded batch
([B, S, H] -> [1, N, H], NonZero + Gather, stock ONNX ops), hands each Attention the
padded layout back (zeros at padding, which its mask hides) and packs its output again.
Inputs and outputs keep their shapes; positions the mask marks as padding become 0.
The caller checks the result against the unchanged graph before using it.
"""

from __future__ import annotations

from typing import Any

from edgeport.backends.padding import PaddingKept

MASK_INPUT = "attention_mask"
_PREFIX = "edgeport_unpad"
# Ops that compute each token on its own, given inputs that are packed or constant
# (weights, biases, LayerNorm scales).
_TOKENWISE_OPS = {
    "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Relu", "Sigmoid",
    "Cast", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "LayerNormalization",
    "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
}  # fmt: skip
_NORMALISATIONS = {"LayerNormalization", "SimplifiedLayerNormalization"}


class _Graph:
    """Node and tensor lookups over an onnx GraphProto, plus builders for new nodes."""

    def __init__(self, model: Any) -> None:
        import numpy as np
        from onnx import numpy_helper

        self.graph = model.graph
        self.constants: dict[str, Any] = {
            init.name: numpy_helper.to_array(init) for init in self.graph.initializer
        }
        for node in self.graph.node:
            if node.op_type == "Constant" and node.output:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
        self._np = np
        self._count = 0
        self.new_nodes: list[Any] = []

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{_PREFIX}/{hint}_{self._count}"

    def consumers(self, tensor: str) -> list[tuple[Any, int]]:
        return [
            (node, index)
            for node in self.graph.node
            for index, name in enumerate(node.input)
            if name == tensor
        ]

    def constant(self, values: Any, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(self._np.asarray(values), name))
        self.constants[name] = self._np.asarray(values)
        return name

    def node(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        output = self.name(op_type.lower())
        self.new_nodes.append(
            helper.make_node(op_type, inputs, [output], name=output, **attributes)
        )
        return output


def _per_token(node: Any, packed: set[str], graph: _Graph) -> bool:
    inputs = [name for name in node.input if name]
    if node.op_type not in _TOKENWISE_OPS or not any(name in packed for name in inputs):
        return False
    if node.op_type == "MatMul":
        return inputs[0] in packed and inputs[1] in graph.constants
    if node.op_type in _NORMALISATIONS:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if axis not in (-1, 2):
            return False
    for name in inputs:
        if name in packed:
            continue
        constant = graph.constants.get(name)
        # Scales and biases broadcast along the hidden axis only.
        if constant is None or any(d != 1 for d in constant.shape[:-1]):
            return False
    return True


def remove_padding(model: Any) -> Any:
    """A copy of the fused ONNX `model` whose token-wise layers run on real tokens only."""
    import numpy as np
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = _Graph(model)
    attention = [n for n in graph.graph.node if n.op_type == "Attention"]
    if not attention:
        raise PaddingKept("no fused Attention op (ONNX Runtime's transformer fusion did not apply)")
    if MASK_INPUT not in {i.name for i in graph.graph.input}:
        raise PaddingKept(f"no {MASK_INPUT!r} input")
    weight = graph.constants.get(attention[0].input[1])
    if weight is None or weight.ndim != 2:
        raise PaddingKept("Attention weights are not a constant matrix")
    width = int(weight.shape[0])

    # Index tensors, computed once from the mask.
    flat = graph.node("Reshape", [MASK_INPUT, graph.constant(np.array([-1], np.int64))])
    rows = graph.node("Squeeze", [graph.node("NonZero", [flat]), graph.constant(np.array([0]))])
    valid = graph.node("Cast", [flat], to=onnx.TensorProto.BOOL)
    counts = graph.node("CumSum", [graph.node("Cast", [valid], to=onnx.TensorProto.INT64),
                                   graph.constant(np.array(0, np.int64))])  # fmt: skip
    position = graph.node("Sub", [counts, graph.constant(np.array(1, np.int64))])
    padding_row = graph.node("Expand", [graph.node("Shape", [rows]), graph.node("Shape", [flat])])
    sources = graph.node("Where", [valid, position, padding_row])
    padded_shape = graph.node(
        "Concat", [graph.node("Shape", [MASK_INPUT]), graph.constant(np.array([width]))], axis=0
    )
    row_shape = graph.constant(np.array([-1, width], np.int64))
    zero_row = graph.constant(np.zeros((1, width), np.float32))
    axis0 = graph.constant(np.array([0], np.int64))

    def pack(tensor: str) -> str:
        gathered = graph.node("Gather", [graph.node("Reshape", [tensor, row_shape]), rows], axis=0)
        return graph.node("Unsqueeze", [gathered, axis0])

    def unpack(tensor: str) -> str:
        extended = graph.node(
            "Concat", [graph.node("Reshape", [tensor, row_shape]), zero_row], axis=0
        )
        return graph.node(
            "Reshape", [graph.node("Gather", [extended, sources], axis=0), padded_shape]
        )

    def rewire(replacement: str, readers: list[tuple[Any, int]]) -> None:
        for node, index in readers:
            node.input[index] = replacement

    # The first layer's Attention reads its input padded, everything else reads it packed;
    # every Attention's output is packed. Later Attentions read packed inputs, and get
    # them unpacked below like any other op that mixes tokens.
    entry = attention[0].input[0]
    rewire(pack(entry), [(n, i) for n, i in graph.consumers(entry) if n.op_type != "Attention"])
    for node in attention:
        output = node.output[0]
        rewire(pack(output), graph.consumers(output))

    packed = {n.output[0] for n in graph.new_nodes if n.op_type == "Unsqueeze"}
    for node in graph.graph.node:
        if _per_token(node, packed, graph):
            packed.update(name for name in node.output if name)
    # A packed graph output keeps its name on the unpacked tensor; the packed one is renamed.
    for output in graph.graph.output:
        if output.name in packed:
            inner = f"{output.name}/{_PREFIX}"
            for node in graph.graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            packed.discard(output.name)
            packed.add(inner)
            unpack(inner)
            graph.new_nodes[-1].output[0] = output.name
    # Any other reader of a packed tensor (a pooler's Gather, Shape, ...) gets it unpacked.
    for node in graph.graph.node:
        if any(out in packed for out in node.output):
            continue
        for index, name in enumerate(node.input):
            if name in packed:
                node.input[index] = unpack(name)
    graph.graph.node.extend(graph.new_nodes)
    _sort_topologically(graph.graph)
    return model


def _sort_topologically(graph: Any) -> None:
    """ONNX requires nodes in dependency order; the new nodes were appended at the end."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise PaddingKept("the rewritten graph has a cycle")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
