"""`--samples` files: bad input is one line and exit 2, and a user's texts stay private.

The bundle's manifest keeps the golden samples' texts only for edgeport's own built-in
samples; a user's samples appear there as a sha256 and a length, never as text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli

from edgeport import samples
from edgeport.errors import BadInputError
from edgeport.families import families
from edgeport.golden import MAX_GOLDEN_TEXT_CHARS, redacted, write_decoder_golden, write_golden
from edgeport.samples import (
    MAX_SAMPLE_CHARS,
    are_builtin,
    builtin_texts,
    load_samples,
    read_samples_file,
)
from edgeport.schemas import ModelDims, ModelInfo, Tolerance
from edgeport.validate import Evaluation

DECODER_GATES = families()["decoder"].thresholds("text-generation-with-past")

SECRET = "patient 4711 was diagnosed with"
USER_TEXTS = [f"{SECRET} condition number {i}, a private record" for i in range(12)]


def _lines(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["samples.txt", "samples.jsonl"])
def test_a_binary_samples_file_is_bad_input_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"text": "fine"}\n\xff\xd8\xff\xe0 JFIF')
    with pytest.raises(BadInputError) as caught:
        read_samples_file(path)
    assert str(caught.value) == (
        f"{path}: not UTF-8 text (byte 17, line 2); is this the right file?"
    )


def test_a_samples_file_over_the_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(samples, "MAX_SAMPLES_BYTES", 1000)
    path = _lines(tmp_path / "samples.txt", USER_TEXTS * 10)
    with pytest.raises(BadInputError, match=r"samples.txt: larger than 1,000 bytes"):
        read_samples_file(path)


def test_a_huge_line_is_cut_and_still_counts_once(tmp_path: Path) -> None:
    huge = "word " * 1_000_000  # 5 MB on one line
    path = _lines(tmp_path / "samples.txt", [huge, huge + "tail", *USER_TEXTS])
    texts = read_samples_file(path)
    assert len(texts[0]) == MAX_SAMPLE_CHARS
    assert len(texts) == 1 + len(USER_TEXTS)  # the two long lines agree on what is used


def test_jsonl_records_are_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r'samples.jsonl:2: expected an object with a "text"'):
        read_samples_file(path)
    path.write_text('{"text": "a"}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"samples.jsonl:2: "):
        read_samples_file(path)


def test_the_origin_of_samples_is_known(tmp_path: Path) -> None:
    for family in ("encoder", "decoder"):
        own = builtin_texts(family)
        assert own.builtin and are_builtin(own.validation) and are_builtin(own.calibration)
    users = load_samples("encoder", _lines(tmp_path / "mine.txt", USER_TEXTS))
    assert not users.builtin and not are_builtin(users.validation)
    assert not are_builtin([])  # nothing known: not shown
    mixed = [*builtin_texts("encoder").validation[:3], USER_TEXTS[0]]
    assert not are_builtin(mixed)


def test_convert_with_a_binary_samples_file_exits_2_before_writing(
    tiny_bert: Path, tmp_path: Path
) -> None:
    path = tmp_path / "samples.txt"
    path.write_bytes(b"\x00\x01\xff\xfe" * 100)
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(tiny_bert), "-p", "x86-64-avx2", "--samples", str(path), "--out", str(out)
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: {path}: not UTF-8 text (byte 2, line 1); is this the right file?"
    assert not out.exists()


# --------------------------------------------------------------------------- golden texts


def _info(task: str, family: str) -> ModelInfo:
    return ModelInfo(
        source="test",
        local_path=Path("/nonexistent"),
        task=task,
        family=family,  # type: ignore[arg-type]
        model_type="bert" if family == "encoder" else "llama",
        parameter_count=1,
        weight_dtype="F32",
        weight_bytes=4,
        files=[],
        dims=ModelDims(hidden_size=4),
        pooling="mean",
        max_length=16,
    )


def _encoder_golden(tmp_path: Path, texts: list[str]) -> dict[str, Any]:
    batches = [{"input_ids": np.ones((1, 3 + i), dtype=np.int64)} for i in range(len(texts))]
    reference = [{"last_hidden_state": np.zeros((1, 3 + i, 4))} for i in range(len(texts))]
    evaluation = Evaluation(batches, reference, ("last_hidden_state",), 0, len(texts))
    spec = write_golden(
        tmp_path,
        _info("feature-extraction", "encoder"),
        evaluation,
        texts,
        families()["encoder"].thresholds("feature-extraction"),
        Tolerance(),
        ["input_ids"],
        ["last_hidden_state"],
    )
    assert spec is not None
    return spec.model_dump(mode="json")


def test_user_samples_are_never_copied_into_the_manifest(tmp_path: Path) -> None:
    texts = [text + " " + "x" * (i * 1000) for i, text in enumerate(USER_TEXTS)]
    golden = _encoder_golden(tmp_path, texts)
    assert SECRET not in json.dumps(golden)
    assert golden["texts_redacted"] is True
    entries = golden["texts"]
    assert len(entries) == len(golden["tokens"]) == 6
    chosen = [texts[tokens - 3] for tokens in golden["tokens"]]
    for entry, text in zip(entries, chosen, strict=True):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert entry == f"sha256:{digest} ({len(text)} chars)" == redacted(text)


def test_builtin_samples_are_kept_whole_so_run_py_can_replay_them(tmp_path: Path) -> None:
    texts = list(builtin_texts("encoder").validation)
    assert max(map(len, texts)) <= MAX_GOLDEN_TEXT_CHARS
    golden = _encoder_golden(tmp_path, texts)
    assert golden["texts_redacted"] is False
    chosen = [texts[tokens - 3] for tokens in golden["tokens"]]
    assert golden["texts"] == chosen


def test_decoder_windows_of_user_samples_are_redacted(tmp_path: Path) -> None:
    windows = [np.arange(10, dtype=np.int64)[None, :] + i for i in range(3)]
    evaluation = Evaluation(
        batches=[{"input_ids": ids, "attention_mask": np.ones_like(ids)} for ids in windows],
        reference=[{"logits": np.zeros((1, 10, 8), dtype=np.float32)} for _ in windows],
        output_names=("logits",),
        calibration_samples=0,
        validation_samples=3,
        texts=("x" * 1000, *(f"{SECRET} window {i}" for i in range(2))),
    )
    info = _info("text-generation-with-past", "decoder")
    spec = write_decoder_golden(tmp_path, info, evaluation, DECODER_GATES, Tolerance(), USER_TEXTS)
    assert spec is not None and spec.texts_redacted
    assert len(spec.texts) == 3 and SECRET not in json.dumps(spec.texts)
    own = builtin_texts("decoder").validation
    spec = write_decoder_golden(tmp_path, info, evaluation, DECODER_GATES, Tolerance(), own)
    assert spec is not None and not spec.texts_redacted
    assert spec.texts == ["x" * (MAX_GOLDEN_TEXT_CHARS - 1) + "…", *evaluation.texts[1:]]
    # Nothing known about the samples: redact (the safe default).
    spec = write_decoder_golden(tmp_path, info, evaluation, DECODER_GATES, Tolerance())
    assert spec is not None and spec.texts_redacted


def test_a_bundle_converted_with_user_samples_verifies_without_their_text(
    tiny_bert: Path, tmp_path: Path
) -> None:
    path = _lines(
        tmp_path / "private.txt", [*USER_TEXTS, *(f"{SECRET} extra {i}" for i in range(6))]
    )
    out = tmp_path / "bundle"
    result = run_cli(
        "convert",
        str(tiny_bert),
        "-p",
        "x86-64-avx2",
        "--recipe",
        "onnx-fp32",
        "--samples",
        str(path),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    manifest_text = (out / "manifest.json").read_text(encoding="utf-8")
    assert SECRET not in manifest_text
    golden = json.loads(manifest_text)["golden"]
    assert golden["texts_redacted"] is True
    assert len(golden["texts"]) == len(golden["tokens"]) > 0
    assert all(entry.startswith("sha256:") for entry in golden["texts"])
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stderr
