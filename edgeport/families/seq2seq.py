"""What speech recognition and translation share: an encoder and a decoder with a KV
cache, exported by optimum as two parts and judged by what the model says.

Validation decodes every validation input greedily through the converted parts
(ondevice.greedy_decode: the decoder's own KV cache, on both runtimes) and through the
PyTorch original with the same loop and the same rules from generation_config.json
(decoder prompt, suppressed tokens, end tokens). Gates, by default: identical output on
at least 95% of inputs, word error rate (speech) or chrF (translation) of the converted
model's text against the original's, next-token agreement along the original's output
under teacher forcing, and no empty output where the original says something.

The parts: `encoder` (kind `<family>-encoder`) and `decoder` (kind `seq2seq-decoder`):
a recipe written for one of those kinds quantises that part only, a recipe for every
family (fp16, weight-only int8) both. This module defines no FAMILY: the speech and
translation modules do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.backends import PartSource
from edgeport.errors import UnsupportedError
from edgeport.families import BenchWorkload, Prepared
from edgeport.runners import ondevice
from edgeport.validate import (
    Evaluation,
    ReferenceModel,
    compare,
    gated_metric,
    ungated_metric,
)

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, Feeds, InferenceSession
    from edgeport.planner import Objective
    from edgeport.schemas import DeviceProfile, GoldenSpec, ModelInfo, Tolerance, ValidationReport
    from edgeport.validate import MetricList

DECODER_KIND = "seq2seq-decoder"
ENCODER_OUTPUT = "last_hidden_state"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
MAX_NEW_TOKENS = 128  # per input (per 30 s window of speech)
GOLDEN_COUNT = 6
MIB = 1024 * 1024


def _json(path: Path) -> dict[str, Any]:
    from edgeport.hub import read_json_file

    if not path.is_file():
        return {}
    data = read_json_file(path)
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class EncoderDecoder:
    """Shared behaviour; subclasses say how inputs become encoder feeds and text."""

    id = ""
    encoder_kind = ""
    tasks: tuple[str, ...] = ()
    task_aliases: tuple[tuple[str, str], ...] = ()
    # The bench times the encoder (once per input); tokens are decoded by the loop.
    decodes = False
    reads_text = False
    pads_tokens = False
    encoder_decoder = True
    # A device keeps these models on flash and in RAM: the smallest that passes wins.
    default_objective: Objective = "size"
    # The gated metrics: (metric, Tolerance field, higher is better).
    text_metric: tuple[str, str, bool] = ("wer", "wer_max", False)

    # ------------------------------------------------------------------ subclass hooks

    def encoder_feeds(self, sample: Any, processor_dir: Path) -> Feeds:
        raise NotImplementedError

    def decoding_rules(self, model: ModelInfo) -> ondevice.DecodingRules:
        raise NotImplementedError

    def truth(self, sample: Any) -> str:
        """What the input really says, when the samples know it (a transcript), else ""."""
        return ""

    # ------------------------------------------------------------------ parts

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        return (PartSource("encoder", self.encoder_kind), PartSource("decoder", DECODER_KIND))

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        from edgeport.schemas import ModelDims

        if not config.get("is_encoder_decoder"):
            raise UnsupportedError(f"{task} needs an encoder-decoder model (Whisper, T5, Marian)")
        if not (folder / TOKENIZER).is_file():
            raise UnsupportedError(
                f"{folder}: no {TOKENIZER}; run.py turns token ids into text from the fast "
                "tokenizer's file"
            )
        hidden = _first_int(config, ("d_model", "hidden_size"), 512)
        heads = _first_int(config, ("decoder_attention_heads", "num_heads"), 8)
        layers = _first_int(config, ("decoder_layers", "num_decoder_layers", "num_layers"), 6)
        return {
            "pooling": "none",
            "dims": ModelDims(
                hidden_size=hidden,
                num_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=heads,
                head_dim=_first_int(config, ("d_kv",), hidden // max(heads, 1)),
                vocab_size=_first_int(config, ("vocab_size",), 32000),
                max_positions=_first_int(
                    config, ("max_target_positions", "n_positions", "max_position_embeddings"), 512
                ),
            ),
        }

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """The decoder's self- and cross-attention caches (kv_cache_bytes per element) for
        one input, and the encoder's states."""
        dims = model.dims
        hidden = dims.hidden_size or 512
        layers = dims.num_layers or 6
        source = self.source_positions(model)
        target = min(MAX_NEW_TOKENS + 8, dims.max_positions or 448)
        caches = 2 * layers * hidden * (source + target) * kv_cache_bytes
        return (caches + source * hidden * 4 * 8 + (dims.vocab_size or 32000) * 4 * 2) / MIB

    def source_positions(self, model: ModelInfo) -> int:
        return model.max_length

    # ------------------------------------------------------------------ validation

    def prepare(
        self,
        model: ModelInfo,
        processor_dir: Path,
        samples: Any,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        rules = self.decoding_rules(model)
        detokenizer = ondevice.Detokenizer(processor_dir / TOKENIZER)
        batches = [self.encoder_feeds(s, processor_dir) for s in samples.validation]
        decoder = reference.seq2seq_decoder()
        states = [reference.encoder(feeds) for feeds in batches]
        generations = tuple(tuple(ondevice.greedy_decode(decoder, s, rules)) for s in states)
        calibration = [self.encoder_feeds(s, processor_dir) for s in samples.calibration]
        empty = sum(1 for g in generations if not g)
        evaluation = Evaluation(
            batches=batches,
            reference=[{ENCODER_OUTPUT: s} for s in states],
            output_names=(ENCODER_OUTPUT,),
            calibration_samples=len(samples.calibration),
            validation_samples=len(batches),
            notes=(
                f"validated on {samples.describe()}",
                f"greedy decoding through each runtime's KV cache against PyTorch's, up to "
                f"{rules.max_new_tokens} tokens per input; the original said nothing for "
                f"{empty} of {len(batches)} inputs",
            ),
            prompts=tuple(rules.prompt for _ in batches),
            reference_generations=generations,
            texts=tuple(detokenizer.decode(g) for g in generations),
            truths=tuple(self.truth(s) for s in samples.validation),
        )
        return Prepared(
            evaluation=evaluation,
            calibration=calibration,
            bench=BenchWorkload(batches[0]),
        )

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport:
        parts = session if isinstance(session, Mapping) else {}
        if "encoder" not in parts or "decoder" not in parts:
            raise UnsupportedError("the converted model has no encoder and decoder parts")
        encoder, decoder = parts["encoder"], parts["decoder"]
        rules = self.decoding_rules(model)
        detokenizer = ondevice.Detokenizer(model.local_path / TOKENIZER)
        outputs: list[dict[str, np.ndarray]] = []
        generations: list[list[int]] = []
        agree = total = 0
        for feeds, expected in zip(
            evaluation.batches, evaluation.reference_generations, strict=True
        ):
            states = ondevice.encode(encoder.run, feeds)
            outputs.append({ENCODER_OUTPUT: states})
            generations.append(ondevice.greedy_decode(decoder.run, states, rules))
            forced = ondevice.teacher_forced(decoder.run, states, rules, expected)
            truth = (
                [*expected, min(rules.eos)] if len(expected) < rules.max_new_tokens else [*expected]
            )
            agree += sum(int(a == b) for a, b in zip(forced, truth, strict=False))
            total += len(truth)
        texts = [detokenizer.decode(g) for g in generations]
        values = ondevice.seq2seq_metrics(
            evaluation.reference_generations, generations, evaluation.texts, texts
        )
        values["teacher_forced_agreement"] = agree / max(total, 1)
        worst = [
            f"{ref!r} -> {got!r}"
            for ref, got in zip(evaluation.texts, texts, strict=True)
            if ref != got
        ][:3]

        def metrics(
            model: ModelInfo,
            evaluation: Evaluation,
            candidate: Sequence[Mapping[str, np.ndarray]],
            tolerance: Tolerance,
            generations: Sequence[Sequence[int]] = (),
        ) -> MetricList:
            return [
                gated_metric(name, values[name], tolerance, field, higher)
                for name, field, higher in self.gates()
            ] + self.truth_metrics(evaluation, texts)

        report = compare(model, evaluation, outputs, tolerance, metrics, generations)
        if worst:
            report = report.model_copy(
                update={"notes": [*report.notes, "outputs that differ: " + "; ".join(worst)]}
            )
        return report

    def truth_metrics(self, evaluation: Evaluation, texts: Sequence[str]) -> MetricList:
        """The text metric against what the inputs really say (the user's `.txt`
        transcripts, the text espeak-ng spoke), for the original and the converted model:
        how good the model is, beside the gates on how faithful the conversion is."""
        known = [i for i, truth in enumerate(evaluation.truths) if truth.strip()]
        if not known:
            return []
        name, _, higher = self.text_metric
        truths = [evaluation.truths[i] for i in known]

        def score(hypotheses: Sequence[str]) -> float:
            chosen = [hypotheses[i] for i in known]
            return ondevice.seq2seq_metrics([[]] * len(known), [[]] * len(known), truths, chosen)[
                name
            ]

        return [
            ungated_metric(f"{name}_vs_truth", score(texts), higher),
            ungated_metric(f"{name}_vs_truth_original", score(evaluation.texts), higher),
        ]

    def gates(self) -> tuple[tuple[str, str, bool], ...]:
        return (
            ("output_identical", "output_identical_min", True),
            self.text_metric,
            ("teacher_forced_agreement", "teacher_forced_agreement_min", True),
            ("empty_outputs", "empty_outputs_max", False),
        )

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        """What verify.py gates golden outputs on (token by token)."""
        return (("token_agreement", "token_agreement_min"),)

    # ------------------------------------------------------------------ bundle

    def processor_files(self, folder: Path) -> list[Path]:
        names = ("preprocessor_config.json", TOKENIZER, GENERATION_CONFIG)
        return [folder / name for name in names if (folder / name).is_file()]

    def prepare_processor(
        self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool
    ) -> Path:
        return model.local_path

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        samples: Any,
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        """A few validation inputs (encoder feeds) with the original's generated ids;
        verify.py decodes them on the device and compares token by token."""
        from edgeport.families.vision import golden_indices
        from edgeport.golden import manifest_texts, thresholds, write_npz
        from edgeport.schemas import GoldenSpec

        count = evaluation.validation_samples
        if not count:
            return None
        chosen = golden_indices(count, GOLDEN_COUNT)
        arrays: dict[str, np.ndarray] = {}
        for slot, index in enumerate(chosen):
            for name, value in evaluation.batches[index].items():
                arrays[ondevice.golden_keys(slot, name, "input")] = np.asarray(value)
            arrays[ondevice.golden_keys(slot, ondevice.TOKENS, "output")] = np.array(
                evaluation.reference_generations[index], dtype=np.int64
            )
        write_npz(folder / ondevice.GOLDEN_FILE, arrays)
        return GoldenSpec(
            file=ondevice.GOLDEN_FILE,
            texts=manifest_texts([evaluation.texts[i] for i in chosen], samples.builtin),
            texts_redacted=not samples.builtin,
            tokens=[len(evaluation.reference_generations[i]) for i in chosen],
            input_names=list(evaluation.batches[chosen[0]]),
            output_names=[ondevice.TOKENS],
            thresholds=thresholds(self.thresholds(model.task), tolerance),
            reference="greedy output of the original PyTorch model on the build host",
        )

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        return {"decoding": self.decoding_rules(model).as_spec(), "tokenizer": TOKENIZER}


def _first_int(config: Mapping[str, Any], keys: Sequence[str], default: int) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def generation_rules(
    folder: Path, prompt: Sequence[int], max_new_tokens: int = MAX_NEW_TOKENS
) -> ondevice.DecodingRules:
    """Decoding rules from generation_config.json (else config.json), with the decoder
    prompt the family computed."""
    config = _json(folder / "config.json")
    generation = _json(folder / GENERATION_CONFIG) or config
    eos = _ids(generation.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    if not eos:
        raise UnsupportedError(f"{folder}: no eos_token_id in {GENERATION_CONFIG} or config.json")
    # A decoder with learned positions (Whisper) cannot go past its last one.
    positions = _first_int(config, ("max_target_positions",), 0)
    if positions:
        max_new_tokens = min(max_new_tokens, positions - len(prompt))
    max_length = _first_int(generation, ("max_length",), 0)
    if max_length > len(prompt):
        max_new_tokens = min(max_new_tokens, max_length - len(prompt))
    return ondevice.DecodingRules(
        prompt=tuple(prompt),
        eos=frozenset(eos),
        suppress=tuple(_ids(generation.get("suppress_tokens"))),
        begin_suppress=tuple(_ids(generation.get("begin_suppress_tokens"))),
        max_new_tokens=max(1, max_new_tokens),
    )


def decoder_start(folder: Path) -> int:
    config = _json(folder / "config.json")
    generation = _json(folder / GENERATION_CONFIG)
    for source in (generation, config):
        value = source.get("decoder_start_token_id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise UnsupportedError(f"{folder}: no decoder_start_token_id")
