"""Translation and other text-to-text generation (T5, BART and kin): an encoder and a
decoder with a KV cache, judged by the text they write.

Inputs are texts tokenised with the model's fast tokenizer (tokenizer.json; Marian ships
only SentencePiece files and is refused at plan); the gates are seq2seq.py's, with chrF of
the converted model's outputs against the original's instead of a word error rate.
Samples are edgeport's sentences, or the user's `--samples FILE` (one source text per
line, every third one calibrates).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.errors import UnsupportedError
from edgeport.families.seq2seq import (
    TOKENIZER,
    EncoderDecoder,
    _first_int,
    decoder_start,
    generation_rules,
)
from edgeport.runners import ondevice

if TYPE_CHECKING:
    from edgeport.backends import Feeds
    from edgeport.samples import SampleSet
    from edgeport.schemas import ModelInfo

MAX_SOURCE_TOKENS = 512


def encode_text(tokenizer_path: Path, text: str, max_tokens: int) -> dict[str, Any]:
    """The encoder's feeds for one text: its ids (with the tokenizer's end token) and mask."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


class Translation(EncoderDecoder):
    id = "text2text"
    encoder_kind = "text2text-encoder"
    tasks = (ondevice.TEXT2TEXT_TASK,)
    task_aliases = (
        ("text2text-generation", ondevice.TEXT2TEXT_TASK),
        ("translation", ondevice.TEXT2TEXT_TASK),
    )
    text_metric = ("chrf", "chrf_min", True)

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        fields = super().inspect(folder, config, task)
        fields["max_length"] = _first_int(
            config, ("max_position_embeddings", "n_positions"), MAX_SOURCE_TOKENS
        )
        return fields

    def load_samples(self, path: Path | None) -> SampleSet:
        from edgeport.samples import load_samples

        return load_samples("encoder", path)

    def encoder_feeds(self, sample: str, processor_dir: Path) -> Feeds:
        return encode_text(processor_dir / TOKENIZER, sample, MAX_SOURCE_TOKENS)

    def decoding_rules(self, model: ModelInfo) -> ondevice.DecodingRules:
        if not (model.local_path / TOKENIZER).is_file():
            raise UnsupportedError(f"{model.local_path}: no {TOKENIZER}")
        return generation_rules(model.local_path, [decoder_start(model.local_path)])

    def runner_template(self, runner: str) -> str | None:
        return "translation.py" if runner in ondevice.RUNTIMES else None

    def device_packages(self, runner: str) -> list[str]:
        return ["tokenizers"]


FAMILY = Translation()
