"""Speech recognition: Whisper as an encoder and a decoder with a KV cache, judged on
speech by what it transcribes.

Inputs are log-mel features computed in numpy from the model's preprocessor_config.json
(ondevice.whisper_features, held to transformers' WhisperFeatureExtractor by the tests),
on the host for validation and on the device by run.py, from speech synthesised by
espeak-ng in several voices, speeds, pitches and noises (edgeport.speech_samples) or the
user's WAV files (`--samples DIR`). The gates are seq2seq.py's, with the word error rate
of the converted model's transcripts against the original's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.families.seq2seq import (
    GENERATION_CONFIG,
    EncoderDecoder,
    _json,
    decoder_start,
    generation_rules,
)
from edgeport.runners import ondevice

if TYPE_CHECKING:
    from edgeport.backends import Feeds
    from edgeport.schemas import ModelInfo
    from edgeport.speech_samples import Utterance

PREPROCESSOR = "preprocessor_config.json"
FEATURES = "input_features"
MIN_USER_RECORDINGS = 6


@dataclass(frozen=True)
class SpeechSamples:
    calibration: tuple[Utterance, ...]
    validation: tuple[Utterance, ...]
    origin: str
    builtin: bool

    def describe(self) -> str:
        seconds = sum(u.seconds for u in self.validation)
        return (
            f"{len(self.validation)} validation utterances ({seconds:.0f} s) and "
            f"{len(self.calibration)} calibration utterances, disjoint: {self.origin}"
        )


def whisper_prompt(folder: Path) -> list[int]:
    """The decoder's first tokens as transformers' Whisper generate() forces them without
    timestamps: <|startoftranscript|>, then for a multilingual model <|en|> and
    <|transcribe|>, then <|notimestamps|>."""
    generation = _json(folder / GENERATION_CONFIG)
    prompt = [decoder_start(folder)]
    if generation.get("is_multilingual"):
        languages = generation.get("lang_to_id") or {}
        tasks = generation.get("task_to_id") or {}
        if "<|en|>" in languages and "transcribe" in tasks:
            prompt += [int(languages["<|en|>"]), int(tasks["transcribe"])]
    no_timestamps = generation.get("no_timestamps_token_id")
    if isinstance(no_timestamps, int):
        prompt.append(no_timestamps)
    return prompt


class SpeechRecognition(EncoderDecoder):
    id = "speech"
    encoder_kind = "speech-encoder"
    tasks = (ondevice.ASR_TASK,)
    task_aliases = (("automatic-speech-recognition", ondevice.ASR_TASK),)

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        if config.get("model_type") != "whisper":
            raise UnsupportedError(
                f"speech recognition supports Whisper models, not {config.get('model_type')!r}"
            )
        features = _json(folder / PREPROCESSOR)
        if features.get("feature_extractor_type") not in (None, "WhisperFeatureExtractor"):
            raise UnsupportedError(f"{folder / PREPROCESSOR}: not a WhisperFeatureExtractor")
        if not features:
            raise UnsupportedError(f"{folder}: no {PREPROCESSOR} (Whisper's feature settings)")
        fields = super().inspect(folder, config, task)
        fields["max_length"] = int(config.get("max_source_positions") or 1500)
        return fields

    def load_samples(self, path: Path | None) -> SpeechSamples:
        from edgeport.speech_samples import builtin_utterances, describe_builtin, user_utterances

        if path is None:
            return SpeechSamples(
                tuple(builtin_utterances("calibration")),
                tuple(builtin_utterances("validation")),
                describe_builtin(),
                True,
            )
        if not path.is_dir():
            raise BadInputError(f"--samples for speech is a folder of WAV files, not {path}")
        recordings = user_utterances(path)
        if len(recordings) < MIN_USER_RECORDINGS:
            raise BadInputError(
                f"{path}: {len(recordings)} WAV files; need at least {MIN_USER_RECORDINGS}"
            )
        # Every third recording calibrates, the rest validate: disjoint and spread.
        return SpeechSamples(
            tuple(u for i, u in enumerate(recordings) if i % 3 == 2),
            tuple(u for i, u in enumerate(recordings) if i % 3 != 2),
            f"the WAV files of {path.name}",
            False,
        )

    def encoder_feeds(self, sample: Utterance, processor_dir: Path) -> Feeds:
        config = _json(processor_dir / PREPROCESSOR)
        samples = ondevice.resample(sample.samples, sample.sampling_rate, config["sampling_rate"])
        return {FEATURES: ondevice.whisper_features(samples, config)}

    def truth(self, sample: Utterance) -> str:
        return sample.text if sample.has_transcript else ""

    def decoding_rules(self, model: ModelInfo) -> ondevice.DecodingRules:
        return generation_rules(model.local_path, whisper_prompt(model.local_path))

    def runner_template(self, runner: str) -> str | None:
        return "speech.py" if runner in ondevice.RUNTIMES else None

    def device_packages(self, runner: str) -> list[str]:
        return []  # WAV, features and detokenising in numpy and the standard library

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Any
    ) -> dict[str, Any]:
        return {
            **super().runtime_fields(model, processor_dir, output_names),
            "preprocessor": PREPROCESSOR,
        }


FAMILY = SpeechRecognition()
