"""The build-time check of padding removal, on stand-in graphs (numpy functions).

Each stand-in is a defect the check must catch before validation does: outputs zeroed
everywhere (what the AVX2 host shipped), wrong only for one short text, wrong only from
the second call of a compiled model on, non-finite, or raising. The check is shared by
the OpenVINO and ONNX Runtime backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from edgeport.backends import Feeds
from edgeport.backends.padding import (
    CHECK_BATCH,
    DYNAMIC,
    QUANTISED,
    Agreement,
    PaddingKept,
    check_inputs,
    check_lengths,
    relative_error_at_tokens,
    remove_padding_checked,
)

HIDDEN = 4
MAX_LENGTH = 40


def _text(length: int, seed: int) -> Feeds:
    ids = np.random.default_rng(seed).integers(5, 100, (1, length))
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((1, length), np.int64),
        "token_type_ids": np.zeros((1, length), np.int64),
    }


# One text per calibration input, as edgeport calibrates; 2 to 30 tokens.
CALIBRATION = [_text(length, seed) for seed, length in enumerate([2, 9, 30, 5, 14, 3, 21, 7])]


def padded_model(feeds: Feeds) -> list[np.ndarray]:
    """Stands in for an encoder: a value per token, and a pooled output per text."""
    ids = feeds["input_ids"].astype(np.float32)
    hidden = np.stack([np.sin(ids * (k + 1)) for k in range(HIDDEN)], axis=-1)
    return [hidden, hidden.sum(axis=1)]


Graph = Callable[[Feeds], list[np.ndarray]]


def compile_graph(graph: Graph) -> Callable[[Feeds], Sequence[np.ndarray]]:
    return graph


def check(rewrite: Callable[[Graph], Graph]) -> tuple[Graph, str]:
    return remove_padding_checked(
        padded_model, rewrite, compile_graph, CALIBRATION, max_length=MAX_LENGTH
    )


def unpadded_model(feeds: Feeds) -> list[np.ndarray]:
    """What a correct rewrite computes: the same at real tokens, zeros at padding."""
    hidden, pooled = padded_model(feeds)
    return [hidden * feeds["attention_mask"][..., None], pooled]


def test_check_lengths_run_from_one_token_to_the_maximum() -> None:
    lengths = check_lengths(256)
    assert lengths[:5] == [1, 2, 3, 4, 5]
    assert lengths[-2:] == [255, 256]
    assert {31, 32, 33, 127, 128, 129} <= set(lengths)
    assert check_lengths(1) == [1]


def test_check_inputs_are_what_validation_runs_and_more() -> None:
    inputs = check_inputs(CALIBRATION, MAX_LENGTH)
    masks = [check.feeds["attention_mask"] for check in inputs]
    singles = [mask for mask in masks if mask.shape[0] == 1]
    batches = [mask for mask in masks if mask.shape[0] > 1]
    # Every calibration text alone, then lengths 1 to the maximum, all without padding.
    assert len(singles) == len(CALIBRATION) + len(check_lengths(MAX_LENGTH))
    assert {int(mask.sum()) for mask in singles} >= {1, 2, 3, MAX_LENGTH - 1, MAX_LENGTH}
    assert all(mask.all() for mask in singles)
    # Mixed-length padded batches as wide as validation's, one with 1 token beside the max.
    assert batches and max(mask.shape[0] for mask in batches) <= CHECK_BATCH
    assert all(not mask.all() for mask in batches)
    lengths = [set(mask.sum(axis=1).tolist()) for mask in batches]
    assert any({1, MAX_LENGTH} <= seen for seen in lengths)
    assert any(seen == {2, 9, 30, 5, 14, 3, 21, 7} for seen in lengths)
    # Every input a calibration text has, padded with zeros.
    assert all(set(check.feeds) == set(CALIBRATION[0]) for check in inputs)
    assert check_inputs([]) == []


def test_a_correct_rewrite_is_kept_and_the_note_says_on_what() -> None:
    chosen, note = check(lambda graph: unpadded_model)
    assert chosen is unpadded_model
    assert note.startswith("padding removed:"), note
    assert f"1 to {MAX_LENGTH} tokens" in note


def test_a_graph_whose_outputs_are_all_zero_is_refused() -> None:
    """What the AVX2 host shipped: the packed tokens all read the padding row."""

    def zeros(feeds: Feeds) -> list[np.ndarray]:
        return [np.zeros_like(value) for value in padded_model(feeds)]

    chosen, note = check(lambda graph: zeros)
    assert chosen is padded_model
    assert note.startswith("padding kept: the unpadded graph differs by 1 (relative)"), note


def test_a_graph_wrong_only_for_a_one_token_text_is_refused() -> None:
    """Padded batches of calibration texts alone (the old check) never see this."""

    def wrong_when_alone_and_short(feeds: Feeds) -> list[np.ndarray]:
        outputs = unpadded_model(feeds)
        if feeds["attention_mask"].shape == (1, 1):
            outputs[0] = -outputs[0]
        return outputs

    chosen, note = check(lambda graph: wrong_when_alone_and_short)
    assert chosen is padded_model
    assert "on 1 text of 1 token" in note, note


def test_a_graph_wrong_from_its_second_call_on_is_refused() -> None:
    """Validation reuses one compiled model for every shape; so does the check."""

    def compiled_once(graph: Graph) -> Graph:
        calls = 0

        def run(feeds: Feeds) -> list[np.ndarray]:
            nonlocal calls
            calls += 1
            outputs = unpadded_model(feeds)
            return outputs if calls == 1 else [outputs[0][:, ::-1], outputs[1]]

        return run

    chosen, note = check(compiled_once)
    assert chosen is padded_model
    assert note.startswith("padding kept: the unpadded graph differs"), note


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_outputs_are_refused(bad: float) -> None:
    def poisoned(feeds: Feeds) -> list[np.ndarray]:
        hidden, pooled = unpadded_model(feeds)
        return [np.where(hidden > 0.9, bad, hidden), pooled]

    chosen, note = check(lambda graph: poisoned)
    assert chosen is padded_model
    assert note.startswith("padding kept: the unpadded graph differs by inf"), note


def test_an_output_of_another_shape_or_a_missing_output_is_refused() -> None:
    chosen, note = check(lambda graph: lambda feeds: unpadded_model(feeds)[:1])
    assert chosen is padded_model and "differs by inf" in note
    chosen, note = check(lambda graph: lambda feeds: [v[:, :1] for v in unpadded_model(feeds)])
    assert chosen is padded_model and "differs by inf" in note


def test_a_graph_that_fails_to_run_keeps_the_padding() -> None:
    def fails_on_long_inputs(feeds: Feeds) -> list[np.ndarray]:
        if feeds["attention_mask"].shape[-1] > 30:
            raise RuntimeError("primitive descriptor list is empty")
        return unpadded_model(feeds)

    chosen, note = check(lambda graph: fails_on_long_inputs)
    assert chosen is padded_model
    assert note.startswith("padding kept: checking the unpadded graph failed (RuntimeError"), note


def test_a_graph_the_rewrite_does_not_understand_keeps_the_padding() -> None:
    def refuse(graph: Graph) -> Graph:
        raise PaddingKept("no attention op")

    def crash(graph: Graph) -> Graph:
        raise KeyError("x")

    assert check(refuse) == (padded_model, "padding kept: no attention op")
    chosen, note = check(crash)
    assert chosen is padded_model and note.startswith("padding kept: rewrite failed (KeyError")


def test_no_calibration_texts_keeps_the_padding() -> None:
    chosen, note = remove_padding_checked(
        padded_model, lambda graph: unpadded_model, compile_graph, []
    )
    assert chosen is padded_model and "no calibration texts" in note


def test_relative_error_compares_real_tokens_only() -> None:
    mask = np.array([[1, 1, 0]])
    expected = [np.array([[[2.0], [4.0], [9.0]]])]
    assert relative_error_at_tokens(expected, [np.array([[[2.0], [4.0], [0.0]]])], mask) == 0
    assert relative_error_at_tokens(expected, [np.array([[[2.0], [3.0], [9.0]]])], mask) == 0.25


def test_quantised_graphs_may_differ_by_int8_noise_but_not_by_a_scale() -> None:
    def noisy(feeds: Feeds) -> list[np.ndarray]:
        hidden, pooled = unpadded_model(feeds)
        step = np.abs(hidden).max() / 127  # one int8 step, here and there
        flips = np.random.default_rng(0).random(hidden.shape) < 0.05
        return [hidden + step * flips, pooled]

    def scaled(feeds: Feeds) -> list[np.ndarray]:  # a cosine alone would not see this
        return [1.5 * value for value in unpadded_model(feeds)]

    def run(graph: Graph) -> tuple[Graph, str]:
        return remove_padding_checked(
            padded_model, lambda _: graph, compile_graph, CALIBRATION, MAX_LENGTH, QUANTISED
        )

    assert run(noisy)[0] is noisy
    assert check(lambda graph: noisy)[0] is padded_model  # float graphs: exact only
    chosen, note = run(scaled)
    assert chosen is padded_model and "differs by 0.5 (relative)" in note


def test_dynamic_quantisation_is_compared_on_texts_alone() -> None:
    """Per-batch activation scales make a padded batch's twin see its padding."""

    def other_scales_in_batches(feeds: Feeds) -> list[np.ndarray]:
        hidden, pooled = unpadded_model(feeds)
        return [hidden if len(hidden) == 1 else np.round(hidden, 1), pooled]

    def run(graph: Graph, agreement: Agreement) -> tuple[Graph, str]:
        return remove_padding_checked(
            padded_model, lambda _: graph, compile_graph, CALIBRATION, MAX_LENGTH, agreement
        )

    chosen, note = run(other_scales_in_batches, DYNAMIC)
    assert chosen is other_scales_in_batches and "padded batches" not in note, note
    assert run(other_scales_in_batches, QUANTISED)[0] is padded_model
    assert run(lambda feeds: [0 * v for v in padded_model(feeds)], DYNAMIC)[0] is padded_model


def test_the_two_graphs_are_never_compiled_at_the_same_time() -> None:
    """A compiled model holds the runtime's buffers for the widest batch it ran: the
    padded twin's is released before the unpadded graph is compiled (conversion memory)."""
    import gc
    import weakref

    class Compiled:
        def __init__(self, graph: Graph) -> None:
            self.graph = graph

        def __call__(self, feeds: Feeds) -> Sequence[np.ndarray]:
            return self.graph(feeds)

    alive: list[weakref.ref[Compiled]] = []
    most_alive = 0

    def compile_counted(graph: Graph) -> Callable[[Feeds], Sequence[np.ndarray]]:
        nonlocal most_alive
        gc.collect()
        compiled = Compiled(graph)
        alive.append(weakref.ref(compiled))
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        return compiled

    chosen, note = remove_padding_checked(
        padded_model, lambda _: unpadded_model, compile_counted, CALIBRATION, MAX_LENGTH
    )
    assert chosen is unpadded_model, note
    assert most_alive == 1
