"""What both padding-removal rewrites share: the refusal, and the check of their result.

openvino_padding.py rewrites OpenVINO IR around ScaledDotProductAttention ops,
onnxruntime_padding.py rewrites ONNX graphs around ONNX Runtime's fused Attention ops.
Either way the backend runs the rewritten graph beside the original on padded
calibration texts and keeps the padding unless they agree at every real token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from edgeport.text_inputs import padded_batch

if TYPE_CHECKING:
    import numpy as np

    from edgeport.backends import Feeds

Graph = TypeVar("Graph")

# How far an unpadded graph may stray from the padded one at real tokens, relative to the
# largest output: only float summation order differs, a wrong rewrite is off by O(1).
PACKING_TOLERANCE = 1e-4


class PaddingKept(ValueError):
    """The graph is not the shape this rewrite understands; the message says why."""


def relative_error_at_tokens(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], mask: np.ndarray
) -> float:
    """Largest difference between two models' outputs at real tokens, relative to the
    largest expected value (outputs shaped [batch, tokens, ...] are compared where the
    mask is set, others whole)."""
    import numpy as np

    keep = mask.astype(bool)
    worst = 0.0
    for reference, candidate in zip(expected, actual, strict=True):
        if reference.shape[:2] == keep.shape:
            reference, candidate = reference[keep], candidate[keep]
        scale = float(np.abs(reference).max(initial=0.0)) or 1.0
        worst = max(worst, float(np.abs(reference - candidate).max(initial=0.0)) / scale)
    return worst


def remove_padding_checked(
    original: Graph,
    rewrite: Callable[[Graph], Graph],
    outputs: Callable[[Graph, Feeds], Sequence[np.ndarray]],
    calibration: Sequence[Feeds],
) -> tuple[Graph, str]:
    """`rewrite(original)` when it computes what `original` does at every real token of
    padded calibration texts, else `original`; the note says which, and why."""
    try:
        unpadded = rewrite(original)
    except PaddingKept as exc:
        return original, f"padding kept: {exc}"
    except Exception as exc:  # a graph shape the rewrite did not foresee: keep padding
        return original, f"padding kept: rewrite failed ({type(exc).__name__}: {exc})"
    batch = padded_batch(calibration)
    if batch is None:
        return original, "padding kept: no calibration texts to check the unpadded graph on"
    mask = batch["attention_mask"]
    error = relative_error_at_tokens(outputs(original, batch), outputs(unpadded, batch), mask)
    if error > PACKING_TOLERANCE:
        return original, f"padding kept: the unpadded graph differs by {error:.2g} (relative)"
    return unpadded, (
        "padding removed: token-wise layers run on real tokens only; identical at every "
        f"real token of {mask.shape[0]} padded calibration texts ({int(mask.sum())} of "
        f"{mask.size} positions real)"
    )
