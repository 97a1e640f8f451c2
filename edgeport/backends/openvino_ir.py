"""Writing OpenVINO IR that does not depend on what the process did before.

OpenVINO names a node that was never given a name `<Type>_<n>`, with `n` from a counter
that runs across the whole process. An IR saved by a conversion that converted something
else first (the second pair of a build, a Ray worker, a shard) would then differ from the
same IR saved by a fresh process, and bundles that should be identical would not be. So
every such name is replaced by `<Type>_<k>`, `k` the node's place in the graph's order,
before saving: the same graph always gets the same names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def stable_names(model: Any) -> None:
    """Rename, in place, the nodes that carry OpenVINO's generated names, and the tensor
    names copied from them (an output without a name is given its Result's)."""
    renamed: dict[str, str] = {}
    ops = list(model.get_ordered_ops())
    for index, op in enumerate(ops):
        kind, name = op.get_type_name(), op.get_friendly_name()
        if re.fullmatch(rf"{re.escape(kind)}_\d+", name):
            renamed[name] = f"{kind}_{index}"
            op.set_friendly_name(renamed[name])
    for op in ops:
        for output in op.outputs():
            names = output.get_tensor().get_names()
            if names & renamed.keys():
                output.get_tensor().set_names({renamed.get(n, n) for n in names})


def save_ir(model: Any, path: Path, *, compress_to_fp16: bool = False) -> None:
    """ov.save_model, with generated node names made stable first (see the module)."""
    import openvino as ov

    stable_names(model)
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)


def fuse_sibling_projections(model: Any) -> int:
    """Merge, in place, MatMuls that read the same tensor with constant weights (a decoder
    layer's q/k/v projections, its MLP's gate/up) into one MatMul over the concatenated
    weights, followed by a VariadicSplit; returns how many groups were merged.

    Decoding a token is a matrix-vector product per projection; one wider product instead
    of three or two halves the FullyConnected calls OpenVINO's CPU plugin makes per token
    and splits the work more evenly across threads. The maths is unchanged: rows of the
    concatenated weights are the original rows, and weight compression quantises rows
    (groups along the input axis) independently, so int4/int8 weights are the same too.
    The merged node's name joins the originals' (`...self_attn.k_proj+q_proj+v_proj/...`),
    so recipe patterns on layer or projection names still match it.
    """
    import numpy as np
    import openvino.opset13 as ops

    siblings: dict[tuple[int, int], list[Any]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        attributes = op.get_attributes()
        weight = op.input(1).get_source_output().get_node()
        if (
            attributes.get("transpose_a")
            or not attributes.get("transpose_b")
            or weight.get_type_name() != "Constant"
            or len(weight.get_output_shape(0)) != 2
        ):
            continue
        source = op.input(0).get_source_output()
        key = (id(source.get_node()), source.get_index())
        siblings.setdefault(key, []).append(op)
    merged = 0
    for unordered in siblings.values():
        # By name, so the merged node's name does not follow the graph's traversal order.
        group = sorted(unordered, key=lambda op: op.get_friendly_name())
        weights = [op.input(1).get_source_output().get_node() for op in group]
        kinds = {(w.get_element_type(), w.get_output_shape(0)[1]) for w in weights}
        if len(group) < 2 or len(kinds) != 1 or any(_initialises_state(op) for op in group):
            continue
        name = _joined_name([op.get_friendly_name() for op in group])
        concatenated = ops.constant(np.concatenate([w.get_data() for w in weights], axis=0))
        concatenated.set_friendly_name(name.split("/")[0] + ".weight")
        product = ops.matmul(group[0].input(0).get_source_output(), concatenated, False, True)
        product.set_friendly_name(name)
        rows = np.array([w.get_output_shape(0)[0] for w in weights], dtype=np.int64)
        split = ops.variadic_split(product, ops.constant(np.int64(-1)), ops.constant(rows))
        split.set_friendly_name(name + "/split")
        for index, op in enumerate(group):
            op.output(0).replace(split.output(index))
        merged += 1
    if merged:
        model.validate_nodes_and_infer_types()
    return merged


def _initialises_state(op: Any, depth: int = 8) -> bool:
    """Whether `op`'s output reaches a ReadValue (a state's initial value: an encoder-decoder's
    cross-attention keys and values). OpenVINO's CPU plugin moves such initialisers into a
    subgraph of single-output nodes, which a VariadicSplit is not, so those stay apart."""
    frontier = [op]
    for _ in range(depth):
        reached = {
            id(target.get_node()): target.get_node()
            for node in frontier
            for output in node.outputs()
            for target in output.get_target_inputs()
        }
        frontier = list(reached.values())
        if any(node.get_type_name() == "ReadValue" for node in frontier):
            return True
    return False


def _joined_name(names: list[str]) -> str:
    """`a.b.q_proj/x`, `a.b.k_proj/x` -> `a.b.q_proj+k_proj/x` (the first one's suffix)."""
    heads = [name.split("/")[0] for name in names]
    dotted = [head.split(".") for head in heads]
    shared = 0
    while all(len(d) > shared + 1 and d[shared] == dotted[0][shared] for d in dotted):
        shared += 1
    prefix = "".join(part + "." for part in dotted[0][:shared])
    return prefix + "+".join(head[len(prefix) :] for head in heads) + names[0][len(heads[0]) :]


def output_head(model: Any, logits: str = "logits") -> Any | None:
    """The MatMul that projects onto the vocabulary (a language model's lm_head): the first
    MatMul on the way back from the `logits` output, when its weight is a constant; None
    when the model has no such output or the head is something else."""
    results = [out for out in model.outputs if logits in out.get_names()]
    frontier = [results[0].get_node()] if results else []
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.get_type_name() == "MatMul":
            return node if _constant_source(node.input(1)) is not None else None
        frontier += [port.get_source_output().get_node() for port in node.inputs()]
    return None


def untie_output_head(model: Any, logits: str = "logits") -> tuple[str | None, bool]:
    """Give the output head its own copy of its weights, in place, when it shares them with
    another node (the token embedding, when embeddings are tied), so that the two can be
    stored at different precisions. Returns the head's name (None when there is no head)
    and whether it was tied."""
    import openvino.opset13 as ops

    head = output_head(model, logits)
    if head is None:
        return None, False
    constant: Any = _constant_source(head.input(1))  # a Constant: output_head checked it
    weight = head.input(1).get_source_output()
    if len(constant.output(0).get_target_inputs()) == 1 == len(weight.get_target_inputs()):
        return str(head.get_friendly_name()), False
    copy = ops.constant(constant.get_data().copy())
    copy.set_friendly_name(head.get_friendly_name().split("/")[0] + ".weight")
    if weight.get_node() is constant:
        head.input(1).replace_source_output(copy.output(0))
    else:  # through a Convert (an fp16 table)
        head.input(1).replace_source_output(ops.convert(copy, weight.get_element_type()).output(0))
    model.validate_nodes_and_infer_types()
    return str(head.get_friendly_name()), True


def _constant_source(port: Any) -> Any | None:
    """The Constant behind a weight input, through an optional Convert."""
    node = port.get_source_output().get_node()
    if node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    return node if node.get_type_name() == "Constant" else None
