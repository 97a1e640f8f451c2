"""Realistic inputs for calibration and validation, kept as two disjoint sets.

Calibration data tunes the quantiser; validation data judges the result. Judging a
model on the sentences it was calibrated on flatters it, so the sets never overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeport.errors import BadInputError

DATA_DIR = Path(__file__).resolve().parent / "data"
MIN_VALIDATION = 8


@dataclass(frozen=True)
class SampleSet:
    calibration: tuple[str, ...]
    validation: tuple[str, ...]
    origin: str

    def describe(self) -> str:
        return (
            f"{len(self.validation)} validation and {len(self.calibration)} calibration "
            f"inputs from {self.origin}; the two sets are disjoint"
        )


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_samples_file(path: Path) -> list[str]:
    """One text per line (.txt), or JSON Lines with a "text" field (.jsonl)."""
    if not path.is_file():
        raise BadInputError(f"samples file not found: {path}")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise BadInputError(f'{path}:{number}: expected an object with a "text" string')
            texts.append(record["text"])
    else:
        texts = _read_lines(path)
    unique = list(dict.fromkeys(texts))
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
        )
    return SampleSet(
        calibration=tuple(_read_lines(DATA_DIR / "calibration_sentences.txt")),
        validation=tuple(_read_lines(DATA_DIR / "validation_sentences.txt")),
        origin="edgeport's built-in varied sentences (fragments, long text, 6 languages, "
        "logs, prices, code)",
    )


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
