"""Golden data: a few validation inputs and the original model's outputs, shipped in the bundle.

The bundle's verify.py replays them on the device with only the runtime and numpy (the
inputs are stored as token ids) and compares the task metric with the same formula and
tolerance as validation. The file is written byte-for-byte deterministically (fixed zip
timestamps, sorted names) so that two conversions of the same model give the same hash.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeport.runners.ondevice import GOLDEN_FILE, golden_keys
from edgeport.schemas import GoldenSpec, Tolerance
from edgeport.validate import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from edgeport.schemas import ModelInfo
    from edgeport.validate import Evaluation

GOLDEN_SAMPLES = 6
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# (metric name as verify.py reports it, Tolerance field that gates it): a family's gates.
Gates = Sequence[tuple[str, str]]
# Thresholds that validation applies even when the recipe sets none (validate.DEFAULT_TOLERANCE).
_ALWAYS_GATED = {
    "embedding_cosine_min",
    "top1_agreement_min",
    "logit_cosine_min",
    "next_token_agreement_min",
    "token_agreement_min",
}
# Language models: the golden output is the reference's next token at every position.
NEXT_TOKEN = "next_token"
# Built-in sample texts are kept in the manifest, cut to this length: every built-in
# encoder sentence fits whole (the longest is 220), so run.py can replay them exactly;
# a decoder's windows (~600 characters) are there for a reader only and are cut.
MAX_GOLDEN_TEXT_CHARS = 256


def redacted(text: str) -> str:
    """What the manifest says of a user's sample: its sha256 and length, never its text."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"sha256:{digest} ({len(text)} chars)"


def manifest_texts(texts: Sequence[str], keep: bool) -> list[str]:
    """One entry per golden sample: the (cut) text when `keep`, else `redacted(text)`."""
    if not keep:
        return [redacted(text) for text in texts]
    return [
        text if len(text) <= MAX_GOLDEN_TEXT_CHARS else text[: MAX_GOLDEN_TEXT_CHARS - 1] + "…"
        for text in texts
    ]


def _keep_texts(keep_texts: bool | None, sample_texts: Sequence[str]) -> bool:
    """Keep texts only when told to, or (by default) when they are edgeport's own samples."""
    from edgeport.samples import are_builtin

    return are_builtin(sample_texts) if keep_texts is None else keep_texts


def thresholds(gates: Gates, tolerance: Tolerance) -> dict[str, float]:
    """The thresholds validation gated on (a family's gates for the task), defaults
    filled in as validation fills them."""
    result: dict[str, float] = {}
    for metric, field in gates:
        value = getattr(tolerance, field)
        if value is None and field in _ALWAYS_GATED:
            value = getattr(DEFAULT_TOLERANCE, field)
        if value is not None:
            result[metric] = float(value)
    return result


def pick(lengths: Sequence[int], count: int = GOLDEN_SAMPLES) -> list[int]:
    """Indices of `count` samples spread over the token lengths: shortest and longest included."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if len(order) <= count:
        return sorted(order)
    if count == 1:
        return [order[-1]]
    chosen = {order[round(k * (len(order) - 1) / (count - 1))] for k in range(count)}
    return sorted(chosen)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed timestamps and sorted names: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(
                buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(
                info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9
            )


def write_golden(
    folder: Path,
    model: ModelInfo,
    evaluation: Evaluation,
    texts: Sequence[str],
    gates: Gates,
    tolerance: Tolerance,
    input_names: Sequence[str],
    output_names: Sequence[str],
    count: int = GOLDEN_SAMPLES,
    keep_texts: bool | None = None,
) -> GoldenSpec | None:
    """Write golden.npz into `folder`; None when the task has no on-device check yet.

    `evaluation.batches[:len(texts)]` must be the texts one at a time (pipeline's
    build_evaluation puts them first), so each golden input has no padding.

    The manifest's `texts` hold one entry per golden sample: the text (cut to
    MAX_GOLDEN_TEXT_CHARS) for edgeport's built-in samples, `sha256:<hex> (N chars)`
    for anything else. `keep_texts=None` decides by content (samples.are_builtin).
    """
    limits = thresholds(gates, tolerance)
    if not limits or not texts:
        return None
    singles = evaluation.batches[: len(texts)]
    lengths = [int(batch["input_ids"].shape[-1]) for batch in singles]
    chosen = pick(lengths, count)
    arrays: dict[str, np.ndarray] = {}
    for slot, index in enumerate(chosen):
        for name in input_names:
            arrays[golden_keys(slot, name, "input")] = np.asarray(
                singles[index][name], dtype=np.int64
            )
        for name in output_names:
            reference = evaluation.reference[index][name]
            arrays[golden_keys(slot, name, "output")] = np.asarray(reference, dtype=np.float32)
    write_npz(folder / GOLDEN_FILE, arrays)
    keep = _keep_texts(keep_texts, texts)
    return GoldenSpec(
        file=GOLDEN_FILE,
        texts=manifest_texts([texts[i] for i in chosen], keep),
        texts_redacted=not keep,
        tokens=[lengths[i] for i in chosen],
        input_names=list(input_names),
        output_names=list(output_names),
        thresholds=limits,
        reference="outputs of the original PyTorch model on the build host",
    )


def write_decoder_golden(
    folder: Path,
    model: ModelInfo,
    evaluation: Evaluation,
    gates: Gates,
    tolerance: Tolerance,
    sample_texts: Sequence[str] = (),
    keep_texts: bool | None = None,
) -> GoldenSpec | None:
    """Language models: every validation window's token ids and the reference's next tokens.

    All windows are kept (a few KB of int32), so verify.py's next-token agreement is the
    number validation gated on, not a noisier subset of it. The manifest keeps the
    windows' text only when the samples they were cut from (`sample_texts`) are edgeport's
    built-in ones (or `keep_texts` says so); otherwise each is `sha256:<hex> (N chars)`.
    """
    limits = thresholds(gates, tolerance)
    if not limits or not evaluation.batches:
        return None
    name = evaluation.output_names[0]
    arrays: dict[str, np.ndarray] = {}
    lengths = []
    for slot, (feeds, reference) in enumerate(
        zip(evaluation.batches, evaluation.reference, strict=True)
    ):
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        arrays[golden_keys(slot, "input_ids", "input")] = ids
        arrays[golden_keys(slot, "attention_mask", "input")] = np.ones_like(ids)
        arrays[golden_keys(slot, NEXT_TOKEN, "output")] = np.asarray(
            reference[name].argmax(axis=-1), dtype=np.int64
        )
        lengths.append(int(ids.shape[-1]))
    write_npz(folder / GOLDEN_FILE, arrays)
    keep = _keep_texts(keep_texts, sample_texts)
    texts = list(evaluation.texts) or [""] * len(lengths)
    return GoldenSpec(
        file=GOLDEN_FILE,
        texts=manifest_texts(texts, keep),
        texts_redacted=not keep,
        tokens=lengths,
        input_names=["input_ids", "attention_mask"],
        output_names=[NEXT_TOKEN],
        thresholds=limits,
        reference="next tokens (argmax) of the original PyTorch model on the build host",
    )
