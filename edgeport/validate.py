"""Compare a converted model with the original PyTorch model on the same realistic inputs.

Checks names, then shapes, then values (collecting every failure, as optimum's
validate_model_outputs does), then the task metric the user cares about: for sentence
embeddings the cosine of the pooled embedding, worst case first, because int8 models
fail on a few short or unusual inputs long before the average moves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.runners import ondevice
from edgeport.schemas import MetricResult, ModelInfo, OutputComparison, Tolerance, ValidationReport

if TYPE_CHECKING:
    from edgeport.backends import Feeds

Outputs = dict[str, np.ndarray]

# Used when a recipe sets no threshold for the task's metric: the gate is never optional.
DEFAULT_TOLERANCE = Tolerance(
    embedding_cosine_min=0.99,
    top1_agreement_min=0.98,
    logit_cosine_min=0.99,
    next_token_agreement_min=0.90,
    perplexity_increase_max=0.05,
    output_identical_min=0.95,
    wer_max=0.02,
    chrf_min=95.0,
    teacher_forced_agreement_min=0.98,
    token_agreement_min=0.95,
    empty_outputs_max=0,
)


class ReferenceModel:
    """The original model in PyTorch, loaded the way optimum exports it."""

    def __init__(self, model: ModelInfo, *, trust_remote_code: bool) -> None:
        import torch

        from edgeport.backends.torch_parts import task_model

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self._torch = torch
        self._model = task_model(model, trust_remote_code=trust_remote_code)

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> Outputs:
        torch = self._torch
        with torch.inference_mode():
            result = self._model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
        return {name: result[name].float().numpy() for name in output_names}

    def run_method(self, method: str, feeds: Feeds, output_name: str) -> Outputs:
        """One method of the model (a part's: `get_image_features`), as it was exported."""
        torch = self._torch
        with torch.inference_mode():
            result = getattr(self._model, method)(
                **{name: torch.from_numpy(value) for name, value in feeds.items()}
            )
        tensor = result if isinstance(result, torch.Tensor) else result[0]
        return {output_name: tensor.float().numpy()}

    def encoder(self, feeds: Feeds) -> np.ndarray:
        """An encoder-decoder's encoder states for one input (its `last_hidden_state`)."""
        torch = self._torch
        with torch.inference_mode():
            result = self._model.get_encoder()(
                **{name: torch.from_numpy(value) for name, value in feeds.items()}
            )
        return np.asarray(result.last_hidden_state.float().numpy())

    def seq2seq_decoder(self) -> ondevice.RunFn:
        """The decoder as a run function with its own KV cache, the convention of the
        exported decoders (ondevice.greedy_decode): `encoder_hidden_states` in the feeds
        start a sequence, feeds without them go on from the cache."""
        torch = self._torch
        state: dict[str, Any] = {}

        def run(feeds: Mapping[str, np.ndarray]) -> Outputs:
            ids = torch.from_numpy(np.asarray(feeds["input_ids"], dtype=np.int64))
            if ondevice.ENCODER_STATES in feeds:
                state.clear()
                state["encoder"] = torch.from_numpy(np.asarray(feeds[ondevice.ENCODER_STATES]))
            with torch.inference_mode():
                result = self._model(
                    encoder_outputs=(state["encoder"],),
                    decoder_input_ids=ids,
                    past_key_values=state.get("past"),
                    use_cache=True,
                )
            state["past"] = result.past_key_values
            return {ondevice.LOGITS: result.logits.float().numpy()}

        return run

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding through the model's own KV cache, never stopping early."""
        torch = self._torch
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        generated: list[int] = []
        past = None
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                result = self._model(input_ids=ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                token = int(result.logits[0, -1].argmax())
                generated.append(token)
                ids = torch.tensor([[token]], dtype=torch.long)
        return generated


# The bundle's verify.py computes the task metrics with these same functions.
pool = ondevice.pool
cosine_rows = ondevice.cosine_rows


@dataclass(frozen=True)
class Evaluation:
    """Inputs and reference outputs, computed once and shared by every candidate."""

    batches: list[Feeds]
    reference: list[Outputs]
    output_names: tuple[str, ...]
    calibration_samples: int
    validation_samples: int
    notes: tuple[str, ...] = ()
    # Language models: greedy continuations of these prompts, from the original model.
    prompts: tuple[tuple[int, ...], ...] = ()
    reference_generations: tuple[tuple[int, ...], ...] = ()
    # Language models: the text of each scored window (for golden data and reports).
    texts: tuple[str, ...] = ()
    # Encoder-decoders: what each input really says (a transcript, a translation) where
    # the samples know it, else "": reported beside the gates, never gated.
    truths: tuple[str, ...] = ()


def _threshold(tolerance: Tolerance, field: str) -> tuple[float, bool]:
    value = getattr(tolerance, field)
    if value is None:
        return float(getattr(DEFAULT_TOLERANCE, field)), True
    return float(value), False


def gated_metric(
    name: str, value: float, tolerance: Tolerance, field: str, higher: bool
) -> tuple[MetricResult, str | None]:
    threshold, defaulted = _threshold(tolerance, field)
    passed = value >= threshold if higher else value <= threshold
    if not np.isfinite(value):
        passed = False
    note = (
        f"{name}: recipe sets no threshold; using edgeport's default {threshold}"
        if defaulted
        else None
    )
    return MetricResult(
        name=name, value=float(value), threshold=threshold, higher_is_better=higher, passed=passed
    ), note


def _valid_positions(feeds: Feeds, array: np.ndarray) -> np.ndarray:
    """Values at real (non-padding) token positions, when the output is per token."""
    mask = feeds.get("attention_mask")
    if mask is not None and array.ndim >= 2 and array.shape[:2] == mask.shape:
        return np.asarray(array[mask.astype(bool)])
    return array


def compare(
    model: ModelInfo,
    evaluation: Evaluation,
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    metrics_of: TaskMetrics,
    generations: Sequence[Sequence[int]] = (),
) -> ValidationReport:
    """Names, shapes and values of every output, then the family's task metrics
    (`metrics_of`). `generations`: the candidate's greedy continuations of
    `evaluation.prompts`."""
    failures: list[str] = []
    notes: list[str] = list(evaluation.notes)
    comparisons: list[OutputComparison] = []

    for name in evaluation.output_names:
        # A multi-part model's batches each hold the outputs of their own part only.
        if any(
            name in ref and name not in outputs
            for ref, outputs in zip(evaluation.reference, candidate, strict=True)
        ):
            failures.append(f"output {name!r} is missing from the converted model")
            continue
        max_error = 0.0
        total_error = 0.0
        count = 0
        reference_shape: list[int] = []
        candidate_shape: list[int] = []
        for feeds, ref, cand in zip(
            evaluation.batches, evaluation.reference, candidate, strict=True
        ):
            if name not in ref:
                continue
            expected, actual = ref[name], np.asarray(cand[name])
            reference_shape, candidate_shape = list(expected.shape), list(actual.shape)
            if expected.shape != actual.shape:
                failures.append(
                    f"output {name!r}: shape {list(actual.shape)} "
                    f"!= reference {list(expected.shape)}"
                )
                break
            if not np.all(np.isfinite(actual)):
                failures.append(f"output {name!r} contains NaN or infinite values")
                break
            diff = np.abs(
                _valid_positions(feeds, expected.astype(np.float64) - actual.astype(np.float64))
            )
            max_error = max(max_error, float(diff.max(initial=0.0)))
            total_error += float(diff.sum())
            count += diff.size
        comparisons.append(
            OutputComparison(
                name=name,
                reference_shape=reference_shape,
                candidate_shape=candidate_shape,
                max_abs_error=max_error,
                mean_abs_error=total_error / max(count, 1),
            )
        )

    metrics: list[MetricResult] = []
    if not failures:
        results = metrics_of(model, evaluation, candidate, tolerance, generations)
        for metric, note in results:
            metrics.append(metric)
            if note:
                notes.append(note)
            if metric.passed is False:
                comparator = ">=" if metric.higher_is_better else "<="
                failures.append(
                    f"{metric.name} = {metric.value:.4f}, needs {comparator} {metric.threshold}"
                )
    return ValidationReport(
        task=model.task,
        validation_samples=evaluation.validation_samples,
        calibration_samples=evaluation.calibration_samples,
        outputs=comparisons,
        metrics=metrics,
        failures=failures,
        notes=notes,
    )


MetricList = list[tuple[MetricResult, str | None]]


def embedding_metrics(
    model: ModelInfo,
    evaluation: Evaluation,
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    generations: Sequence[Sequence[int]] = (),
) -> MetricList:
    name = evaluation.output_names[0]
    cosines = []
    for feeds, ref, cand in zip(evaluation.batches, evaluation.reference, candidate, strict=True):
        mask = feeds["attention_mask"]
        expected = pool(ref[name], mask, model.pooling, model.normalize_embeddings)
        actual = pool(np.asarray(cand[name]), mask, model.pooling, model.normalize_embeddings)
        cosines.append(cosine_rows(expected, actual))
    values = np.concatenate(cosines)
    return embedding_cosine_metrics(float(values.min()), float(values.mean()), tolerance)


def embedding_cosine_metrics(worst: float, mean: float, tolerance: Tolerance) -> MetricList:
    """The worst embedding cosine, always gated; the mean, gated when the recipe says."""
    results = [gated_metric("embedding_cosine_min", worst, tolerance, "embedding_cosine_min", True)]
    if tolerance.embedding_cosine_mean_min is not None:
        results.append(
            gated_metric(
                "embedding_cosine_mean", mean, tolerance, "embedding_cosine_mean_min", True
            )
        )
    else:
        results.append(ungated_metric("embedding_cosine_mean", mean, True))
    return results


def top1_metrics(
    model: ModelInfo,
    evaluation: Evaluation,
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    generations: Sequence[Sequence[int]] = (),
) -> MetricList:
    name = evaluation.output_names[0]
    agree = 0
    total = 0
    for feeds, ref, cand in zip(evaluation.batches, evaluation.reference, candidate, strict=True):
        expected = _valid_positions(feeds, ref[name]).argmax(axis=-1)
        actual = _valid_positions(feeds, np.asarray(cand[name])).argmax(axis=-1)
        agree += int((expected == actual).sum())
        total += int(expected.size)
    return [
        gated_metric("top1_agreement", agree / max(total, 1), tolerance, "top1_agreement_min", True)
    ]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64)
    values = values - values.max(axis=-1, keepdims=True)
    return np.asarray(values - np.log(np.exp(values).sum(axis=-1, keepdims=True)))


def token_nll(logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each next real token (position t predicts token t+1)."""
    logp = log_softmax(logits[:, :-1])
    targets = input_ids[:, 1:]
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    valid = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    return np.asarray(-picked[valid])


def token_kl(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(reference || candidate) of the next-token distribution at every position (nats),
    as llama.cpp's `llama-perplexity --kl-divergence` reports it."""
    reference = np.asarray(reference)
    candidate = np.asarray(candidate)
    vocab = min(reference.shape[-1], candidate.shape[-1])
    log_p = log_softmax(reference[..., :vocab]).reshape(-1, vocab)
    log_q = log_softmax(candidate[..., :vocab]).reshape(-1, vocab)
    return np.asarray(np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=-1), 0.0))


def ungated_metric(name: str, value: float, higher: bool) -> tuple[MetricResult, str | None]:
    """A metric reported beside the gates, deciding nothing."""
    return MetricResult(
        name=name, value=float(value), threshold=None, higher_is_better=higher, passed=None
    ), None


def decoder_metrics(
    model: ModelInfo,
    evaluation: Evaluation,
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    generations: Sequence[Sequence[int]] = (),
) -> MetricList:
    """Next-token agreement at every position, perplexity of both, KL divergence of the
    next-token distributions (reported, not gated), greedy generation match."""
    name = evaluation.output_names[0]
    agree = total = 0
    nll_reference: list[np.ndarray] = []
    nll_candidate: list[np.ndarray] = []
    divergences: list[np.ndarray] = []
    for feeds, ref, cand in zip(evaluation.batches, evaluation.reference, candidate, strict=True):
        ids = np.asarray(feeds["input_ids"])
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(ids)))
        expected = _valid_positions(feeds, ref[name]).argmax(axis=-1)
        actual = _valid_positions(feeds, np.asarray(cand[name])).argmax(axis=-1)
        agree += int((expected == actual).sum())
        total += int(expected.size)
        nll_reference.append(token_nll(ref[name], ids, mask))
        nll_candidate.append(token_nll(np.asarray(cand[name]), ids, mask))
        divergences.append(
            token_kl(_valid_positions(feeds, ref[name]), _valid_positions(feeds, cand[name]))
        )
    kl = np.concatenate(divergences) if divergences else np.zeros(1)
    ppl_reference = float(np.exp(np.concatenate(nll_reference).mean()))
    ppl_candidate = float(np.exp(np.concatenate(nll_candidate).mean()))
    results = [
        gated_metric(
            "next_token_agreement",
            agree / max(total, 1),
            tolerance,
            "next_token_agreement_min",
            True,
        ),
        gated_metric(
            "perplexity_increase",
            ppl_candidate / ppl_reference - 1.0,
            tolerance,
            "perplexity_increase_max",
            False,
        ),
        ungated_metric("perplexity_reference", ppl_reference, False),
        ungated_metric("perplexity", ppl_candidate, False),
        ungated_metric("kl_divergence_mean", float(kl.mean()), False),
        ungated_metric("kl_divergence_p99", float(np.percentile(kl, 99)), False),
    ]
    if evaluation.reference_generations and generations:
        matched = positions = 0
        for expected_tokens, actual_tokens in zip(
            evaluation.reference_generations, generations, strict=True
        ):
            positions += len(expected_tokens)
            matched += sum(
                int(a == b) for a, b in zip(expected_tokens, actual_tokens, strict=False)
            )
        match = matched / max(positions, 1)
        if tolerance.generation_match_min is None:
            results.append(ungated_metric("generation_match", match, True))
        else:
            results.append(
                gated_metric("generation_match", match, tolerance, "generation_match_min", True)
            )
    return results


TaskMetrics = Callable[
    [ModelInfo, Evaluation, Sequence[Mapping[str, np.ndarray]], Tolerance, Sequence[Sequence[int]]],
    MetricList,
]


def primary_metric(report: ValidationReport) -> float:
    """The number that ranks candidates by accuracy: the first task metric."""
    return report.metrics[0].value if report.metrics else float("-inf")


def run_batches(
    run: Callable[[Any], Mapping[str, np.ndarray]], batches: Sequence[Feeds]
) -> list[Outputs]:
    return [dict(run(batch)) for batch in batches]
