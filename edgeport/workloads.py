"""What differs per model family, in one place: inputs, reference, bench, runner, golden.

The pipeline orders the stages and never looks at the family itself; it asks
`workload_for(model)` for an object behind the `Workload` Protocol:

- `prepare`: realistic evaluation inputs with the original PyTorch model's outputs,
  calibration inputs, and the benchmark workload;
- `validate`: run a candidate's session on those inputs and compare (validate.compare);
- `runner_template`: the bundle's run.py for a target;
- `write_golden`: golden data for the bundle's verify.py;
- `runtime_extras`: family-specific fields of the manifest's runtime section.

Encoders (embeddings, classification) run texts alone and in padded batches. Decoders
(KV-cache language models) are scored on windows of up to 128 tokens at every position
(next-token agreement, perplexity) and by greedy generation through the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeport.errors import UnsupportedError
from edgeport.validate import Evaluation, ReferenceModel, compare, run_batches

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, Feeds, InferenceSession
    from edgeport.planner import Objective
    from edgeport.samples import SampleSet
    from edgeport.schemas import GoldenSpec, ModelInfo, Tolerance, ValidationReport

# (target, family) -> runner template in edgeport/runners/, shipped as the bundle's run.py.
RUNNER_TEMPLATES: dict[tuple[str, str], str] = {
    ("onnxruntime", "encoder"): "onnxruntime_encoder.py",
    ("openvino", "encoder"): "openvino_encoder.py",
    ("onnxruntime", "decoder"): "onnxruntime_decoder.py",
    ("openvino", "decoder"): "openvino_decoder.py",
}


@dataclass(frozen=True)
class BenchWorkload:
    """What bench.py times: one batch of feeds, or greedy decoding from a prompt."""

    feeds: Feeds
    new_tokens: int = 0  # > 0: decode this many tokens from feeds["input_ids"] with the cache


@dataclass(frozen=True)
class Prepared:
    evaluation: Evaluation
    calibration: list[Feeds]
    bench: BenchWorkload
    # Calibration inputs with reference outputs: what the sensitivity search may look
    # at, so the validation inputs stay unseen until the final gate.
    search: Evaluation | None = None


class Workload(Protocol):
    family: str
    # What the winner minimises when the user does not say.
    default_objective: Objective

    def prepare(
        self,
        model: ModelInfo,
        tokenizer_dir: Path,
        samples: SampleSet,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared: ...

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport: ...

    def runner_template(self, target_id: str) -> str | None: ...

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        texts: Sequence[str],
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None: ...

    def runtime_extras(self, model: ModelInfo) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- encoders


class EncoderWorkload:
    family = "encoder"
    default_objective: Objective = "latency"
    validation_batch = 16
    bench_batch = 32

    def prepare(
        self,
        model: ModelInfo,
        tokenizer_dir: Path,
        samples: SampleSet,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        from edgeport.text_inputs import TextEncoder

        encoder = TextEncoder(tokenizer_dir, model.max_length, exported.input_names)
        texts = list(samples.validation)
        # Each text alone and in mixed-length padded batches: dynamic quantisation scales
        # activations per batch, so a short text beside long ones is judged too.
        batches = [encoder.encode([text]) for text in texts] + encoder.batches(
            texts, self.validation_batch
        )
        references = [reference.run(batch, exported.output_names) for batch in batches]
        evaluation = Evaluation(
            batches=batches,
            reference=references,
            output_names=tuple(exported.output_names),
            calibration_samples=len(samples.calibration),
            validation_samples=len(texts),
            notes=(
                f"validated on {samples.describe()}",
                f"each text run alone and in padded batches of {self.validation_batch}",
            ),
        )
        calibration = [encoder.encode([text]) for text in samples.calibration]
        search = Evaluation(
            batches=calibration,
            reference=[reference.run(batch, exported.output_names) for batch in calibration],
            output_names=tuple(exported.output_names),
            calibration_samples=len(samples.calibration),
            validation_samples=0,
        )
        return Prepared(
            evaluation=evaluation,
            calibration=calibration,
            bench=BenchWorkload(encoder.encode(list(samples.validation[: self.bench_batch]))),
            search=search,
        )

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport:
        outputs = run_batches(session.run, evaluation.batches)
        return compare(model, evaluation, outputs, tolerance)

    def runner_template(self, target_id: str) -> str | None:
        return RUNNER_TEMPLATES.get((target_id, self.family))

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        texts: Sequence[str],
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        from edgeport.golden import write_golden

        return write_golden(folder, model, evaluation, texts, tolerance, input_names, output_names)

    def runtime_extras(self, model: ModelInfo) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- decoders


def eos_token_ids(folder: Path) -> list[int]:
    """Tokens that end generation, from generation_config.json, else config.json."""
    from edgeport.hub import read_json_file

    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if not path.is_file():
            continue
        config = read_json_file(path)
        value = config.get("eos_token_id") if isinstance(config, dict) else None
        if isinstance(value, int):
            return [value]
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return [int(v) for v in value]
    return []


class DecoderWorkload:
    family = "decoder"
    # On the device, decoding is bound by memory bandwidth and RAM; a small model that
    # fits this host's caches hides that, so the smallest passing candidate wins by default.
    default_objective: Objective = "size"
    window = 128  # tokens per scored window
    min_window = 8
    max_windows = 48
    prompt_count = 6
    prompt_tokens = 8
    new_tokens = 32
    bench_prompt_tokens = 32

    def prepare(
        self,
        model: ModelInfo,
        tokenizer_dir: Path,
        samples: SampleSet,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        import numpy as np
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        encoded = [tokenizer.encode(text).ids for text in samples.validation]
        windows: list[list[int]] = []
        for ids in encoded:
            for start in range(0, len(ids), self.window):
                chunk = ids[start : start + self.window]
                if len(chunk) >= self.min_window:
                    windows.append(chunk)
        windows = windows[: self.max_windows]
        if not windows:
            raise UnsupportedError(
                f"no validation text has {self.min_window} tokens; give longer --samples"
            )

        def feeds(ids: Sequence[int]) -> Feeds:
            array = np.array([list(ids)], dtype=np.int64)
            return {"input_ids": array, "attention_mask": np.ones_like(array)}

        batches = [feeds(ids) for ids in windows]
        references = [reference.run(batch, ("logits",)) for batch in batches]
        step = max(1, len(encoded) // self.prompt_count)
        prompts = tuple(
            tuple(ids[: self.prompt_tokens])
            for ids in encoded[::step][: self.prompt_count]
            if len(ids) >= 2
        )
        generations = tuple(tuple(reference.generate(p, self.new_tokens)) for p in prompts)
        tokens = sum(len(w) for w in windows)
        evaluation = Evaluation(
            batches=batches,
            reference=references,
            output_names=("logits",),
            calibration_samples=len(samples.calibration),
            validation_samples=len(samples.validation),
            notes=(
                f"validated on {samples.describe()}",
                f"{len(windows)} windows of up to {self.window} tokens ({tokens} positions) "
                "scored in one pass with an empty cache; "
                f"{len(prompts)} prompts of {self.prompt_tokens} tokens decoded greedily for "
                f"{self.new_tokens} tokens through the KV cache",
            ),
            prompts=prompts,
            reference_generations=generations,
            texts=tuple(tokenizer.decode(w) for w in windows),
        )
        calibration = [
            feeds(ids[: self.window])
            for ids in (tokenizer.encode(text).ids for text in samples.calibration)
            if ids
        ]
        bench_prompt = max(encoded, key=len)[: self.bench_prompt_tokens]
        return Prepared(
            evaluation=evaluation,
            calibration=calibration,
            bench=BenchWorkload({"input_ids": feeds(bench_prompt)["input_ids"]}, self.new_tokens),
        )

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport:
        from edgeport.backends import DecoderSession

        if not isinstance(session, DecoderSession):
            raise UnsupportedError("the converted model has no KV-cache generation session")
        outputs = run_batches(session.run, evaluation.batches)
        generations = [session.generate(list(p), self.new_tokens) for p in evaluation.prompts]
        return compare(model, evaluation, outputs, tolerance, generations)

    def runner_template(self, target_id: str) -> str | None:
        return RUNNER_TEMPLATES.get((target_id, self.family))

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        texts: Sequence[str],
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        from edgeport.golden import write_decoder_golden

        # `texts` (the validation samples) tell whether the windows' text may be shipped.
        return write_decoder_golden(folder, model, evaluation, tolerance, texts)

    def runtime_extras(self, model: ModelInfo) -> dict[str, Any]:
        return {"eos_token_ids": eos_token_ids(model.local_path)}


WORKLOADS: dict[str, Workload] = {"encoder": EncoderWorkload(), "decoder": DecoderWorkload()}


def workload_for(model: ModelInfo) -> Workload:
    try:
        return WORKLOADS[model.family]
    except KeyError as exc:
        raise UnsupportedError(f"{model.family} models are not supported yet") from exc
