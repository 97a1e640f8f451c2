"""Helpers shared by the backends' weight-only (int4/int8) paths: block sizes and name patterns.

Both runtimes quantise weights in blocks along the reduction axis, and both let a recipe
keep the most sensitive layers at 8 bits by name. The names differ per runtime
(`/model/layers.0/self_attn/v_proj/MatMul` in ONNX, `__module.model.layers.0.self_attn.
v_proj/aten::linear/MatMul` in OpenVINO IR), so recipes write patterns such as
`layers[./]0[./]` that match both, and Llama, Qwen2 and Mistral naming alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Smallest block we accept before handing odd layers to the runtime's own fallback.
MIN_GROUP_SIZE = 16


def choose_group_size(
    requested: int | None, channels: Iterable[int], minimum: int = MIN_GROUP_SIZE
) -> tuple[int, bool]:
    """The largest block size <= requested (halving) that divides every layer's channels.

    Returns (group_size, per_layer_fallback). When no block size of at least `minimum`
    divides every layer (hidden 688 = 16 x 43 with a requested 128, say), the requested
    size is kept and the runtime adjusts (NNCF) or pads (MatMulNBits) the layers it does
    not divide. A request of None or -1 means per-channel scales, which always fit.
    """
    if requested is None or requested <= 0:
        return -1, False
    sizes = [c for c in channels if c > 0]
    size = requested
    while size >= minimum:
        if all(c % size == 0 for c in sizes):
            return size, False
        size //= 2
    return requested, True


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    return [re.compile(pattern) for pattern in patterns]


def matches_any(name: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """True when any pattern is found anywhere in the node name (re.search)."""
    return any(pattern.search(name) for pattern in patterns)


def search_patterns(patterns: Sequence[str]) -> list[str]:
    """The same patterns for matchers that anchor at the start (NNCF uses re.match)."""
    return [f".*(?:{pattern})" for pattern in patterns]
