"""Realistic inputs for calibration and validation, kept as two disjoint sets.

Calibration data tunes the quantiser; validation data judges the result. Judging a
model on the sentences it was calibrated on flatters it, so the sets never overlap.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeport.errors import BadInputError

DATA_DIR = Path(__file__).resolve().parent / "data"
MIN_VALIDATION = 8
# A samples file is read whole; past this it is not a samples file (or not a sensible one).
MAX_SAMPLES_BYTES = 64 * 1024 * 1024
# The characters of one sample that are used: an encoder truncates at its max_length
# (at most a few thousand characters) and a decoder scores at most 48 windows of 128
# tokens, so the rest of a longer line would only cost tokenising time.
MAX_SAMPLE_CHARS = 16_384


@dataclass(frozen=True)
class SampleSet:
    calibration: tuple[str, ...]
    validation: tuple[str, ...]
    origin: str
    # True for edgeport's own texts; a user's file may hold private data, so its texts
    # are never copied into a bundle (golden.py stores their sha256 and length instead).
    builtin: bool = False

    def describe(self) -> str:
        return (
            f"{len(self.validation)} validation and {len(self.calibration)} calibration "
            f"inputs from {self.origin}; the two sets are disjoint"
        )


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_samples_file(path: Path) -> list[str]:
    """One text per line (.txt), or JSON Lines with a "text" field (.jsonl).

    At most MAX_SAMPLES_BYTES of UTF-8; each text is cut to MAX_SAMPLE_CHARS characters.
    """
    from edgeport.catalog import is_file, read_text_file, shorten

    if not is_file(path):
        raise BadInputError(f"samples file not found: {shorten(str(path), 240)}")
    content = read_text_file(path, max_bytes=MAX_SAMPLES_BYTES)
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
            except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
                raise BadInputError(f"{path}:{number}: not a usable JSON record") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise BadInputError(f'{path}:{number}: expected an object with a "text" string')
            texts.append(record["text"])
    else:
        texts = [line.strip() for line in content.splitlines() if line.strip()]
    unique = list(dict.fromkeys(text[:MAX_SAMPLE_CHARS] for text in texts))
    if len(unique) < MIN_VALIDATION + 2:
        raise BadInputError(
            f"{path}: {len(unique)} distinct samples; need at least {MIN_VALIDATION + 2}"
        )
    return unique


def builtin_texts(task_family: str) -> SampleSet:
    if task_family == "decoder":
        return SampleSet(
            calibration=tuple(_read_paragraphs(DATA_DIR / "calibration_paragraphs.txt")),
            validation=tuple(_read_paragraphs(DATA_DIR / "validation_paragraphs.txt")),
            origin="edgeport's built-in English prose",
            builtin=True,
        )
    return SampleSet(
        calibration=tuple(_read_lines(DATA_DIR / "calibration_sentences.txt")),
        validation=tuple(_read_lines(DATA_DIR / "validation_sentences.txt")),
        origin="edgeport's built-in varied sentences (fragments, long text, 6 languages, "
        "logs, prices, code)",
        builtin=True,
    )


@functools.cache
def _builtin_text_set() -> frozenset[str]:
    sets = (builtin_texts("decoder"), builtin_texts("encoder"))
    return frozenset(text for s in sets for text in (*s.calibration, *s.validation))


def are_builtin(texts: Iterable[str]) -> bool:
    """True when there are texts and every one is edgeport's own (public) sample text.

    What golden.py keeps in a manifest: a user's samples may be private, edgeport's are not.
    """
    listed = list(texts)
    return bool(listed) and all(text in _builtin_text_set() for text in listed)


def _read_paragraphs(path: Path) -> list[str]:
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [" ".join(block.split()) for block in blocks if block.strip()]


def load_samples(task_family: str, samples_file: Path | None) -> SampleSet:
    if samples_file is None:
        return builtin_texts(task_family)
    texts = read_samples_file(samples_file)
    # Every third sample calibrates, the rest validate: deterministic and disjoint, and
    # both sets see the whole range of the user's file rather than its head and tail.
    calibration = tuple(text for index, text in enumerate(texts) if index % 3 == 2)
    validation = tuple(text for index, text in enumerate(texts) if index % 3 != 2)
    return SampleSet(calibration, validation, f"{samples_file.name}")
