"""Language models: decoder-only transformers that generate through a KV cache.

Scored on windows of up to 128 tokens at every position (next-token agreement,
perplexity) and by greedy generation through the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import UnsupportedError
from edgeport.families import BenchWorkload, Prepared
from edgeport.text_inputs import TokenizedText
from edgeport.validate import Evaluation, ReferenceModel, compare, decoder_metrics, run_batches

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, Feeds, InferenceSession, PartSource
    from edgeport.planner import Objective
    from edgeport.samples import SampleSet
    from edgeport.schemas import DeviceProfile, GoldenSpec, ModelInfo, Tolerance, ValidationReport

MIB = 1024 * 1024


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


class TextGeneration(TokenizedText):
    """Decoder-only language models with a KV cache (Llama, Qwen, Phi, GPT-2...)."""

    id = "decoder"
    tasks = ("text-generation-with-past",)
    task_aliases = (("text-generation", "text-generation-with-past"),)
    decodes = True
    reads_text = True
    pads_tokens = False
    encoder_decoder = False
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
        processor_dir: Path,
        samples: SampleSet,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        import numpy as np
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(processor_dir / "tokenizer.json"))
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
        return compare(model, evaluation, outputs, tolerance, decoder_metrics, generations)

    def runner_template(self, runner: str) -> str | None:
        return {
            "onnxruntime": "onnxruntime_decoder.py",
            "openvino": "openvino_decoder.py",
            "llama.cpp": "llama_cpp_decoder.py",
        }.get(runner)

    def device_packages(self, runner: str) -> list[str]:
        # llama.cpp tokenises with the vocabulary inside the GGUF file.
        return [] if runner == "llama.cpp" else super().device_packages(runner)

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
        from edgeport.golden import write_decoder_golden

        # The validation samples tell whether the windows' text may be shipped.
        return write_decoder_golden(
            folder, model, evaluation, self.thresholds(model.task), tolerance, samples.validation
        )

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        return (("next_token_agreement", "next_token_agreement_min"),)

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        return ()  # one graph, exported by optimum

    def load_samples(self, path: Path | None) -> SampleSet:
        from edgeport.samples import load_samples

        return load_samples("decoder", path)

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        return {}

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """The KV cache at the profile's context (kv_cache_bytes per element: the
        target's), the logits, and a window's states."""
        from edgeport.model_shape import kv_cache_elements

        dims = model.dims
        hidden = dims.hidden_size or 768
        context = min(profile.context_length, dims.max_positions or profile.context_length)
        kv_cache = kv_cache_elements(dims, context) * kv_cache_bytes
        logits = (dims.vocab_size or 32000) * 4 * 2
        return (kv_cache + logits + context * hidden * 4 * 8) / MIB

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        return {
            **self.tokenizer_fields(model, processor_dir),
            "eos_token_ids": eos_token_ids(model.local_path),
        }


FAMILY = TextGeneration()
