"""Text encoders: sentence embeddings and text, token and masked-token classifiers.

Each validation text runs alone and in mixed-length padded batches: dynamic quantisation
scales activations per batch, so a short text beside long ones is judged too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.families import BenchWorkload, Prepared
from edgeport.text_inputs import TokenizedText
from edgeport.validate import (
    Evaluation,
    ReferenceModel,
    compare,
    embedding_metrics,
    run_batches,
    top1_metrics,
)

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, InferenceSession, PartSource
    from edgeport.planner import Objective
    from edgeport.samples import SampleSet
    from edgeport.schemas import DeviceProfile, GoldenSpec, ModelInfo, Tolerance, ValidationReport

MIB = 1024 * 1024


class TextEncoder(TokenizedText):
    """Embeddings and classifiers over text (BERT-like encoders, sentence-transformers)."""

    id = "encoder"
    tasks = (
        "feature-extraction",
        "text-classification",
        "token-classification",
        "fill-mask",
    )
    task_aliases = (("sentence-similarity", "feature-extraction"),)
    decodes = False
    reads_text = True
    pads_tokens = True
    encoder_decoder = False
    default_objective: Objective = "latency"
    validation_batch = 16
    bench_batch = 32
    search_batch = 8

    def prepare(
        self,
        model: ModelInfo,
        processor_dir: Path,
        samples: SampleSet,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        from edgeport.text_inputs import TextEncoder as TextBatcher

        encoder = TextBatcher(processor_dir, model.max_length, exported.input_names)
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
        # The mixed-precision search validates one variant per quantised node on these:
        # a few padded batches cost a few runs per variant instead of one per text, and
        # static quantisation scales do not depend on the batch.
        search_batches = encoder.batches(list(samples.calibration), self.search_batch)
        search = Evaluation(
            batches=search_batches,
            reference=[reference.run(batch, exported.output_names) for batch in search_batches],
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
        metrics = embedding_metrics if model.task == "feature-extraction" else top1_metrics
        return compare(model, evaluation, outputs, tolerance, metrics)

    def runner_template(self, runner: str) -> str | None:
        return {"onnxruntime": "onnxruntime_encoder.py", "openvino": "openvino_encoder.py"}.get(
            runner
        )

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        samples: SampleSet,
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        from edgeport.golden import write_golden

        return write_golden(
            folder,
            model,
            evaluation,
            samples.validation,
            self.thresholds(model.task),
            tolerance,
            input_names,
            output_names,
        )

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        if task == "feature-extraction":
            return (
                ("embedding_cosine_min", "embedding_cosine_min"),
                ("embedding_cosine_mean", "embedding_cosine_mean_min"),
            )
        return (("top1_agreement", "top1_agreement_min"),)

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        return ()  # one graph, exported by optimum

    def load_samples(self, path: Path | None) -> SampleSet:
        from edgeport.samples import load_samples

        return load_samples("encoder", path)

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        """Pooling, normalisation and max length, from a sentence-transformers layout."""
        from edgeport.model_info import sentence_transformers_settings

        pooling, normalize, max_length = sentence_transformers_settings(folder)
        if task == "feature-extraction" and pooling is None:
            pooling = "mean"  # the usual choice for encoders without a pooling config
        fields: dict[str, Any] = {"pooling": pooling or "none", "normalize_embeddings": normalize}
        if max_length:
            fields["max_length"] = max_length
        return fields

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """Hidden states and the 4x feed-forward expansion, plus one attention score matrix."""
        dims = model.dims
        hidden = dims.hidden_size or 768
        heads = dims.num_attention_heads or 12
        batch = profile.batch_size
        seq = min(profile.sequence_length, model.max_length)
        hidden_states = batch * seq * hidden * 4 * 8
        attention = batch * heads * seq * seq * 4 * 2
        return (hidden_states + attention) / MIB

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        from edgeport.model_info import config_labels

        return {
            **self.tokenizer_fields(model, processor_dir),
            "pooling": model.pooling,
            "normalize_embeddings": model.normalize_embeddings,
            "labels": config_labels(model.local_path) if model.task != "feature-extraction" else {},
        }


FAMILY = TextEncoder()
