#!/usr/bin/env python3
"""Run this bundle's encoder on the device with ONNX Runtime, tokenizers and numpy only.

    python run.py "some text" "another text"      # JSON embeddings (or labels) on stdout
    echo "some text" | python run.py -            # texts from stdin, one per line

Written by edgeport; settings come from manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc


def make_tokenizer(spec: dict[str, Any]) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=spec["max_length"])
    tokenizer.enable_padding(pad_id=spec.get("pad_token_id", 0))
    return tokenizer


def make_session(spec: dict[str, Any], threads: int | None) -> ort.InferenceSession:
    return ondevice.onnxruntime_session(
        HERE / spec["model_file"], ondevice.spec_threads(spec, threads), spec.get("providers") or ()
    )


def encode(tokenizer: Tokenizer, texts: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {name: feeds[name] for name in input_names}


def predict(
    session: ort.InferenceSession, tokenizer: Tokenizer, spec: dict[str, Any], texts: list[str]
) -> list[Any]:
    feeds = encode(tokenizer, texts, spec["input_names"])
    output = session.run(None, feeds)[0]
    if spec["task"] == "feature-extraction":
        pooled = ondevice.pool(
            output, feeds["attention_mask"], spec["pooling"], spec["normalize_embeddings"]
        )
        embeddings: list[Any] = pooled.astype(np.float32).tolist()
        return embeddings
    labels = spec.get("labels") or {}
    if spec["task"] == "text-classification":
        return [labels.get(str(i), str(i)) for i in output.argmax(axis=-1).tolist()]
    mask = feeds["attention_mask"].astype(bool)
    return [
        [labels.get(str(i), str(i)) for i in row[m].tolist()]
        for row, m in zip(output.argmax(-1), mask, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="*", help="texts to run; '-' reads stdin")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    texts = args.texts
    if texts == ["-"] or not texts:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        parser.error("give at least one text")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    session = make_session(spec, args.threads)
    results = predict(session, make_tokenizer(spec), spec, texts)
    json.dump({"model": spec["model_file"], "task": spec["task"], "results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
