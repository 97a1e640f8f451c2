"""Run an encoder's token-wise layers on the real tokens only (an OpenVINO graph rewrite).

A batch of mixed-length sentences is mostly padding: the built-in benchmark batch of 32
sentences is 43 tokens wide and 57 % padding. Every Linear, LayerNorm, activation and
residual Add works on one token at a time, so they can run on the real tokens packed
together, [B, S, H] -> [1, N, H], and compute exactly what they computed before. Only
attention mixes tokens: its query, key and value are unpacked to the padded layout
(padding rows are zero, and the attention mask already hides them), and its output is
packed again. The model keeps its inputs and outputs; only positions the mask marks as
padding change, to zero.

This is the CPU counterpart of the "remove padding" kernels of FasterTransformer and ONNX
Runtime's packed attention, done with stock OpenVINO ops (NonZero, Gather, ScatterUpdate),
so the bundle still needs nothing but the runtime. It also reads graphs NNCF has already
quantised or compressed (FakeQuantize, SmoothQuant scales, int8 weights behind a
decompression subgraph), so it can run on the very model that ships. The rewrite is
checked by the caller: the result must equal the original at every real token, or the
padded model is kept.

The index arithmetic deliberately avoids integer element-wise ops (Select, Subtract,
NotEqual on the mask): on CPUs without AVX-512 the CPU plugin's JIT Select tests an
integer condition with a floating-point compare, and with CPU_DENORMALS_OPTIMIZATION
(flush-to-zero, which edgeport and its runners enable) the integer 1 is a denormal that
reads as 0, so every token was sent to the padding row and every output became zero.
See docs/research/padding-removal-isa.md.
"""

from __future__ import annotations

from typing import Any

from edgeport.backends.padding import PaddingKept

MASK_INPUT = "attention_mask"
# Layout-only ops between a projection and the attention (heads split and merged).
_LAYOUT_OPS = {"Transpose", "Reshape"}
# Ops that work on each token alone, whatever the leading dimensions are, as long as
# their other inputs are constants (weights, biases, LayerNorm scales) or packed too.
_TOKENWISE_OPS = {
    "MatMul", "MVN", "Add", "Multiply", "Subtract", "Divide", "Maximum", "Minimum", "Power",
    "SquaredDifference", "Gelu", "Erf", "Tanh", "Relu", "Sigmoid", "Swish", "HSwish",
    "HSigmoid", "Mish", "SoftPlus", "Elu", "Clamp", "Convert", "Sqrt", "Exp", "Abs",
    "Negative", "FakeQuantize",
}  # fmt: skip


# How deep a subgraph of constants may be and still count as a weight: int8 weights are
# Constant -> Convert -> (Subtract zero point) -> Multiply scale -> (Convert, Reshape).
_CONSTANT_DEPTH = 6


def _is_constant(value: Any, depth: int = _CONSTANT_DEPTH) -> bool:
    """Whether `value` is computed from constants alone (a weight, maybe stored as fp16 or
    int8 with its decompression ops). Deeper subgraphs count as not constant: that only
    keeps the padding around the op that reads them."""
    node = value.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if kind in {"Parameter", "ReadValue"} or depth == 0 or node.get_input_size() == 0:
        return False
    return all(_is_constant(v, depth - 1) for v in node.input_values())


def _constant_value(value: Any) -> Any:
    node = value.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _per_token(op: Any, packed: set[tuple[str, int]]) -> bool:
    """Whether `op`, reading at least one packed value, computes each token on its own."""
    kind = op.get_type_name()
    inputs = list(op.input_values())
    if kind not in _TOKENWISE_OPS or not any(_key(v) in packed for v in inputs):
        return False
    if kind == "MatMul":  # a projection: packed activations times a constant weight
        transposed = bool(op.get_attributes().get("transpose_a", False))
        return _key(inputs[0]) in packed and not transposed and _is_constant(inputs[1])
    if kind == "MVN":  # normalises over the hidden axis only
        axes = _constant_value(inputs[1])
        return axes is not None and {int(a) for a in axes.reshape(-1)} <= {-1, 2}
    return all(_key(value) in packed or _along_hidden(value) for value in inputs)


def _along_hidden(value: Any) -> bool:
    """A constant that broadcasts along the hidden axis only (a bias, a LayerNorm or
    SmoothQuant scale, a FakeQuantize range): anything shaped by the sequence or the batch
    would no longer line up with the packed tokens."""
    shape = value.get_partial_shape()
    return (
        _is_constant(value)
        and shape.is_static
        and all(int(d.get_length()) == 1 for d in list(shape)[:-1])
    )


def _key(value: Any) -> tuple[str, int]:
    return value.get_node().get_friendly_name(), value.get_index()


class _Packing:
    """Index tensors computed once from the attention mask, and pack/unpack builders."""

    def __init__(self, mask: Any) -> None:
        import numpy as np
        import openvino.opset13 as ops

        self._ops = ops
        self._np = np
        flat = ops.reshape(mask, self._ints(-1), special_zero=False)
        # Rows of the flattened [B*S] batch that hold real tokens.
        self.rows = ops.squeeze(ops.non_zero(flat, "i64"), self._ints(0))
        # For every padded position, the packed row it reads; padding reads row N (zeros).
        # Scattered, not computed with Select/Subtract: integer element-wise kernels differ
        # by ISA, and the AVX2 Select reads its condition wrongly under flush-to-zero.
        count = ops.squeeze(ops.shape_of(self.rows, "i64"), self._ints(0))
        padding_row = ops.broadcast(count, ops.shape_of(flat, "i64"))
        packed_row = ops.range(
            ops.constant(np.array(0, np.int64)), count, ops.constant(np.array(1, np.int64)), "i64"
        )
        self.sources = ops.scatter_update(padding_row, self.rows, packed_row, self._ints(0))
        self.mask_shape = ops.shape_of(mask, "i64")
        self.created: set[str] = set()  # friendly names of every node built here
        self.packed_outputs: set[tuple[str, int]] = set()

    def _ints(self, *values: int) -> Any:
        return self._ops.constant(self._np.array(values, self._np.int64))

    def _mark(self, *nodes: Any) -> None:
        self.created.update(node.get_friendly_name() for node in nodes)

    @staticmethod
    def _width(value: Any) -> int:
        last = value.get_partial_shape()[-1]
        if not last.is_static:
            raise PaddingKept("hidden size is not static")
        return int(last.get_length())

    def pack(self, value: Any) -> Any:
        """[B, S, H] -> [1, N, H]: the real tokens, in batch order."""
        ops, width = self._ops, self._width(value)
        rows = ops.reshape(value, self._ints(-1, width), special_zero=False)
        gathered = ops.gather(rows, self.rows, self._ints(0))
        packed = ops.unsqueeze(gathered, self._ints(0))
        self._mark(rows, gathered, packed)
        self.packed_outputs.add(_key(packed.output(0)))
        return packed.output(0)

    def unpack(self, value: Any) -> Any:
        """[1, N, H] -> [B, S, H], zeros at padding."""
        ops, np, width = self._ops, self._np, self._width(value)
        rows = ops.reshape(value, self._ints(-1, width), special_zero=False)
        zero_row = ops.constant(np.zeros((1, width), value.get_element_type().to_dtype()))
        extended = ops.concat([rows, zero_row], 0)
        gathered = ops.gather(extended, self.sources, self._ints(0))
        shape = ops.concat([self.mask_shape, self._ints(width)], 0)
        padded = ops.reshape(gathered, shape, special_zero=False)
        self._mark(rows, extended, gathered, padded)
        return padded.output(0)


def _rewire(value: Any, build: Any) -> None:
    """Every consumer of `value` reads `build(value)` instead."""
    targets = list(value.get_target_inputs())
    replacement = build(value)
    for target in targets:
        target.replace_source_output(replacement)


def _through_layout(value: Any, upward: bool) -> Any:
    if upward:
        while value.get_node().get_type_name() in _LAYOUT_OPS:
            value = value.get_node().input_value(0)
        return value
    while True:
        targets = list(value.get_target_inputs())
        if len(targets) != 1 or targets[0].get_node().get_type_name() not in _LAYOUT_OPS:
            return value
        value = targets[0].get_node().output(0)


def _scaled_input(node: Any) -> Any | None:
    """The one non-constant input of a bias Add, a scale Multiply or a FakeQuantize with
    constant ranges (what sits between hidden states and a projection once NNCF has
    quantised the model), else None."""
    kind = node.get_type_name()
    inputs = list(node.input_values())
    if kind == "FakeQuantize":
        return inputs[0] if all(_along_hidden(v) for v in inputs[1:]) else None
    if kind not in {"Add", "Multiply"}:
        return None
    variable = [v for v in inputs if not _along_hidden(v)]
    return variable[0] if len(variable) == 1 else None


def _projection_input(value: Any) -> Any:
    """The hidden states a query/key/value projection reads: up through its bias Add and
    output quantiser to the MatMul, then up through the input quantiser and SmoothQuant
    scale to the value the residual branch reads too."""
    node = value.get_node()
    while node.get_type_name() != "MatMul":
        source = _scaled_input(node)
        if source is None:
            raise PaddingKept(f"{node.get_type_name()} between the hidden states and attention")
        node = source.get_node()
    hidden = node.input_value(0)
    while hidden.get_node().get_type_name() in {"Multiply", "FakeQuantize"}:
        source = _scaled_input(hidden.get_node())
        if source is None:
            break
        hidden = source
    return hidden


def remove_padding(model: Any) -> Any:
    """A copy of `model` whose token-wise layers run on real tokens only.

    Raises PaddingKept when the graph has no attention op this rewrite recognises
    (ScaledDotProductAttention fed by projections), no attention_mask input, or
    hidden states of unknown width.
    """
    model = model.clone()
    attention = [
        op for op in model.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"
    ]
    if not attention:
        raise PaddingKept("no ScaledDotProductAttention op (attention exported as plain ops)")
    masks = [port for port in model.inputs if MASK_INPUT in port.get_names()]
    if not masks:
        raise PaddingKept(f"no {MASK_INPUT!r} input")
    packing = _Packing(masks[0].get_node().output(0))

    # Find every place first: rewiring changes what the walks would see.
    sites = []
    for op in attention:
        query_key_value = (_through_layout(op.input_value(i), True) for i in range(3))
        distinct = {_key(value): value for value in query_key_value}
        sites.append((list(distinct.values()), _through_layout(op.output(0), False)))
    entry = _projection_input(sites[0][0][0])
    for value in [entry, *(v for values, _ in sites for v in values), *(o for _, o in sites)]:
        if value.get_partial_shape().rank.get_length() != 3:
            raise PaddingKept("hidden states around attention are not [batch, tokens, hidden]")

    # Pack the first layer's input and every attention output; the query, key and value
    # projections then produce packed tensors, and their reshapes into heads read them
    # unpacked below, like any other op that mixes tokens.
    _rewire(entry, packing.pack)
    for _, output in sites:
        _rewire(output, packing.pack)

    # Packed values flow through token-wise ops; any other consumer (Result, a pooler's
    # Gather, ...) reads them unpacked.
    packed = set(packing.packed_outputs)
    for op in model.get_ordered_ops():
        if _per_token(op, packed):
            packed.update(_key(out) for out in op.outputs())
    exits = []
    for op in model.get_ordered_ops():
        for out in op.outputs():
            if _key(out) not in packed:
                continue
            readers = [
                target
                for target in out.get_target_inputs()
                if target.get_node().get_friendly_name() not in packing.created
                and not any(_key(o) in packed for o in target.get_node().outputs())
            ]
            if readers:
                exits.append((out, readers))
    for out, readers in exits:
        unpacked = packing.unpack(out)
        for target in readers:
            target.replace_source_output(unpacked)
    model.validate_nodes_and_infer_types()
    return model
