"""What both padding-removal rewrites share: the refusal, and the check of their result.

openvino_padding.py rewrites OpenVINO IR around ScaledDotProductAttention ops,
onnxruntime_padding.py rewrites ONNX graphs around ONNX Runtime's fused Attention ops.
Either way the backend runs the rewritten graph beside its padded twin (the same model,
same precision, padding kept) and keeps the padding unless they agree at every real
token of every check input.

The check is meant to be at least as demanding as the validation that follows it, so a
graph it passes cannot then fail validation for reasons of its own making:
- the same kinds of inputs: each calibration text alone (a batch of one), lengths from
  1 token to the model's maximum (packed lengths odd, even, under and over a kernel's
  block size), and mixed-length padded batches as wide as validation's;
- one compiled model per graph, reused across all those shapes, with the runtime
  settings validation and the bundle's runner use (the AVX2 defect this guards against
  only appeared with those settings, see docs/research/padding-removal-isa.md);
- every output, its shape, finite values, and the values at real tokens: to float
  rounding for float graphs (EXACT); for graphs with quantised activations, whose CPU
  kernels may round differently once the layout changes, every token within the cosine
  validation allows a whole int8 model against PyTorch (QUANTISED);
- any error while checking keeps the padding (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from edgeport.text_inputs import right_pad

if TYPE_CHECKING:
    import numpy as np

    from edgeport.backends import Feeds

Graph = TypeVar("Graph")
# Compiles a graph once; the runner it returns maps inputs to the graph's outputs.
Compile = Callable[[Graph], Callable[["Feeds"], Sequence["np.ndarray"]]]


@dataclass(frozen=True)
class Agreement:
    """How closely an unpadded graph must follow its padded twin at every real token."""

    # Largest |difference| relative to the largest |output|: catches a wrong scale too,
    # which a cosine cannot see.
    max_relative: float
    # Smallest cosine between the two graphs' vectors at one token (or one row of an
    # output that is not per token); None: not checked.
    min_cosine: float | None = None
    # Whether padded batches are compared too. Not where the padded twin's numbers
    # depend on its own padding: dynamic quantisation scales activations over the whole
    # batch, padding included, so only a text alone has a faithful twin.
    batches: bool = True


# Float graphs (fp32, fp16 or int8 weights, float activations): only summation order may
# differ (measured 0 on MiniLM, AVX-512 and AVX2 alike); a wrong rewrite is off by O(1).
EXACT = Agreement(max_relative=1e-4)
# Quantised activations (int8-static): the CPU plugin picks other attention kernels once
# a Gather sits between a quantiser and attention, and a float difference of one ulp can
# move a value into the next int8 bucket. Measured on MiniLM over the check inputs:
# worst token cosine 0.9976 (AVX-512 VNNI) and 0.9965 (AVX2), relative 0.019 and 0.030,
# with the same accuracy against the float model. The bar is validation's own for a whole
# int8 model (0.99 embedding cosine against PyTorch), here for every single token.
QUANTISED = Agreement(max_relative=0.2, min_cosine=0.99)
# Dynamic quantisation (ONNX Runtime int8-dynamic): texts alone, to QUANTISED's bar. On
# MiniLM's padded batches a token of the padded twin is 0.93 from the packed graph's, by
# the scales alone; the packing itself is checked exact on the float graph first.
DYNAMIC = Agreement(max_relative=0.2, min_cosine=0.99, batches=False)
PACKING_TOLERANCE = EXACT.max_relative
# Mixed batches as wide as validation's (families/text_encoder.py's validation_batch).
CHECK_BATCH = 16
MASK = "attention_mask"


class PaddingKept(ValueError):
    """The graph is not the shape this rewrite understands; the message says why."""


@dataclass(frozen=True)
class CheckInput:
    feeds: Feeds
    what: str  # for the note: "1 text of 3 tokens", "a batch of 16 texts of 4-41 tokens"


def _describe(feeds: Feeds) -> str:
    lengths = feeds[MASK].sum(axis=-1)
    low, high = int(lengths.min()), int(lengths.max())
    span = f"{low}" if low == high else f"{low}-{high}"
    tokens = f"{span} token{'' if high == 1 else 's'}"
    if len(lengths) == 1:
        return f"1 text of {tokens}"
    return f"a batch of {len(lengths)} texts of {tokens}"


def check_lengths(longest: int) -> list[int]:
    """1, 2, 3, then each power of two and its neighbours, up to `longest`: packed token
    counts odd and even, under, at and over the block sizes kernels split rows by."""
    lengths = {1, 2, 3, longest - 1, longest}
    power = 4
    while power <= longest:
        lengths.update((power - 1, power, power + 1))
        power *= 2
    return sorted(n for n in lengths if 1 <= n <= longest)


def _token_stream(items: Sequence[Feeds]) -> Feeds | None:
    """Every calibration input laid end to end ([1, total] per input name), or None when
    an input is not one value per token."""
    import numpy as np

    streams: dict[str, list[np.ndarray]] = {}
    for feeds in items:
        width = feeds[MASK].shape
        if len(width) != 2 or width[0] != 1:
            return None
        for name, values in feeds.items():
            if values.shape != width:
                return None
            streams.setdefault(name, []).append(values)
    if not streams:
        return None
    stream = {name: np.concatenate(parts, axis=-1) for name, parts in streams.items()}
    stream[MASK] = np.ones_like(stream[MASK])
    return stream


def check_inputs(
    calibration: Sequence[Feeds], max_length: int | None = None, batch: int = CHECK_BATCH
) -> list[CheckInput]:
    """The inputs the unpadded graph is checked on (module docstring)."""
    import numpy as np

    texts = [feeds for feeds in calibration if MASK in feeds]
    if not texts:
        return []
    inputs = [CheckInput(feeds, _describe(feeds)) for feeds in texts]
    stream = _token_stream(texts)
    synthetic: list[Feeds] = []
    if stream is not None:
        longest = max_length or int(stream[MASK].shape[-1])
        total = int(stream[MASK].shape[-1])
        repeats = -(-longest // total)  # tile the stream when it is shorter than the maximum
        tiled = {name: np.tile(values, (1, repeats)) for name, values in stream.items()}
        synthetic = [
            {name: values[:, :length] for name, values in tiled.items()}
            for length in check_lengths(longest)
        ]
        inputs += [CheckInput(feeds, _describe(feeds)) for feeds in synthetic]
    groups = [texts[start : start + batch] for start in range(0, len(texts), batch)]
    # The extremes side by side (1 token beside the longest, 2 beside the next...):
    # batches that are mostly padding.
    ends = [synthetic[-1 - i // 2] if i % 2 else synthetic[i // 2] for i in range(len(synthetic))]
    groups += [ends[start : start + batch] for start in range(0, len(ends), batch)]
    for group in groups:
        if len(group) > 1:
            padded = right_pad(group)
            feeds = {name: np.concatenate([f[name] for f in padded]) for name in padded[0]}
            inputs.append(CheckInput(feeds, _describe(feeds)))
    return inputs


def _rows(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """One vector per real token ([batch, tokens, ...] outputs) or per row (others)."""
    if values.shape[:2] == keep.shape:
        values = values[keep]
    return values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)


def worst_cosine_at_tokens(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], mask: np.ndarray
) -> float:
    """Smallest cosine between two models' vectors at one real token (or one row);
    a zero vector against a non-zero one counts as 0. Call after relative_error_at_tokens
    has found the shapes equal and the values finite."""
    import numpy as np

    keep = mask.astype(bool)
    worst = 1.0
    for reference, candidate in zip(expected, actual, strict=True):
        a = _rows(np.asarray(reference, np.float64), keep)
        b = _rows(np.asarray(candidate, np.float64), keep)
        norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        both_zero = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(b, axis=-1) == 0)
        cosine = np.where(both_zero, 1.0, (a * b).sum(axis=-1) / np.maximum(norms, 1e-300))
        worst = min(worst, float(cosine.min(initial=1.0)))
    return worst


def relative_error_at_tokens(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], mask: np.ndarray
) -> float:
    """Largest difference between two models' outputs at real tokens, relative to the
    largest expected value (outputs shaped [batch, tokens, ...] are compared where the
    mask is set, others whole). Differing shapes or non-finite values count as infinite."""
    import numpy as np

    keep = mask.astype(bool)
    if len(expected) != len(actual):
        return float("inf")
    worst = 0.0
    for reference, candidate in zip(expected, actual, strict=True):
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        if reference.shape != candidate.shape or not np.all(np.isfinite(candidate)):
            return float("inf")
        if reference.shape[:2] == keep.shape:
            reference, candidate = reference[keep], candidate[keep]
        reference = reference.astype(np.float64)
        scale = float(np.abs(reference).max(initial=0.0)) or 1.0
        error = float(np.abs(reference - candidate.astype(np.float64)).max(initial=0.0))
        worst = max(worst, error / scale)
    return worst


def remove_padding_checked(
    padded: Graph,
    rewrite: Callable[[Graph], Graph],
    compile_graph: Compile[Graph],
    calibration: Sequence[Feeds],
    max_length: int | None = None,
    agreement: Agreement = EXACT,
) -> tuple[Graph, str]:
    """`rewrite(padded)` when it computes what `padded` does at every real token of every
    check input, within `agreement`, else `padded`; the note says which, and why.

    `padded` is the graph that would ship with its padding kept (quantised already, if
    it is quantised) and `rewrite` returns the graph that would ship without, so what is
    checked is what ships.
    """
    try:
        unpadded = rewrite(padded)
    except PaddingKept as exc:
        return padded, f"padding kept: {exc}"
    except Exception as exc:  # a graph shape the rewrite did not foresee: keep padding
        return padded, f"padding kept: rewrite failed ({type(exc).__name__}: {exc})"
    inputs = [
        check
        for check in check_inputs(calibration, max_length)
        if agreement.batches or check.feeds[MASK].shape[0] == 1
    ]
    if not inputs:
        return padded, "padding kept: no calibration texts to check the unpadded graph on"
    try:
        # One compiled model each, reused across every shape, as validation reuses its
        # session: dynamic-shape paths that only a second call takes are covered too.
        # One at a time: the padded twin's outputs are kept, its compiled model (and the
        # runtime's buffers for the widest batch) released before the other is built.
        run_padded = compile_graph(padded)
        expected_outputs = [run_padded(check.feeds) for check in inputs]
        del run_padded
        run_unpadded = compile_graph(unpadded)
        worst, cosine, failure = 0.0, 1.0, ""
        for check, expected in zip(inputs, expected_outputs, strict=True):
            actual = run_unpadded(check.feeds)
            error = relative_error_at_tokens(expected, actual, check.feeds[MASK])
            if not error <= agreement.max_relative:  # NaN and inf included
                failure = f"differs by {error:.2g} (relative)"
            elif agreement.min_cosine is not None:
                similar = worst_cosine_at_tokens(expected, actual, check.feeds[MASK])
                cosine = min(cosine, similar)
                if not similar >= agreement.min_cosine:
                    failure = f"differs at a token (cosine {similar:.4f})"
            if failure:
                return padded, (
                    f"padding kept: the unpadded graph {failure} from the same model with "
                    f"padding, on {check.what}"
                )
            worst = max(worst, error)
    except Exception as exc:  # fail closed: an unpadded graph that cannot be checked
        return padded, (
            f"padding kept: checking the unpadded graph failed ({type(exc).__name__}: {exc})"
        )
    singles = sum(1 for check in inputs if check.feeds[MASK].shape[0] == 1)
    longest = max(int(check.feeds[MASK].sum(axis=-1).max()) for check in inputs)
    allowed = f"worst {worst:.2g} relative, allowed {agreement.max_relative:g}"
    if agreement.min_cosine is not None:
        allowed += f"; token cosine >= {cosine:.4f}, allowed {agreement.min_cosine:g}"
    batches = f" and {len(inputs) - singles} padded batches" if agreement.batches else ""
    return unpadded, (
        "padding removed: token-wise layers run on real tokens only; the shipped graph "
        f"matches the same model with padding ({allowed}) at every real token of "
        f"{len(inputs)} inputs: {singles} alone (1 to {longest} tokens){batches}"
    )
