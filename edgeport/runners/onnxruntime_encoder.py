#!/usr/bin/env python3
"""Run this bundle's encoder on the device with ONNX Runtime, tokenizers and numpy only.

    python run.py "some text" "another text"      # JSON embeddings (or labels) on stdout
    echo "some text" | python run.py -            # texts from stdin, one per line

Written by edgeport; settings come from manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
VERIFIER = "verify.py"


def load_manifest() -> dict[str, Any]:
    """manifest.json beside this file, read through the bundle's own verify.py.

    verify.py refuses, before any model loads, a manifest whose paths leave the bundle
    (`..`, absolute, through a link). It is loaded by its path: no other module named
    `verify` on sys.path can stand in for it.
    """
    checker = HERE / VERIFIER
    spec = importlib.util.spec_from_file_location("_bundle_verify", checker)
    if spec is None or spec.loader is None or not checker.is_file():
        refuse(f"no {VERIFIER} beside run.py to check manifest.json; copy the whole bundle")
    module = importlib.util.module_from_spec(spec)
    written, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a damaged verify.py: stop rather than run unchecked
        refuse(f"{VERIFIER} cannot be loaded: {type(exc).__name__}: {exc}")
    finally:
        sys.dont_write_bytecode = written
    try:
        manifest: dict[str, Any] = module.load_manifest(HERE)
    except module.BundleError as exc:
        refuse(str(exc), exc.exit_code)
    return manifest


def refuse(message: str, exit_code: int = 2) -> NoReturn:
    print(f"run.py: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def make_tokenizer(spec: dict[str, Any]) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=spec["max_length"])
    tokenizer.enable_padding(pad_id=spec.get("pad_token_id", 0))
    return tokenizer


def make_session(spec: dict[str, Any], threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or spec["threads"]
    providers = [
        p
        for p in spec.get("providers", ["CPUExecutionProvider"])
        if p in ort.get_available_providers()
    ]
    return ort.InferenceSession(
        str(HERE / spec["model_file"]), options, providers=providers or None
    )


def encode(tokenizer: Tokenizer, texts: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {name: feeds[name] for name in input_names}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    hidden = hidden.astype(np.float64)
    weights = mask[..., None].astype(np.float64)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(weights > 0, hidden, -np.inf).max(axis=1)
    else:
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


def predict(
    session: ort.InferenceSession, tokenizer: Tokenizer, spec: dict[str, Any], texts: list[str]
) -> list[Any]:
    feeds = encode(tokenizer, texts, spec["input_names"])
    output = session.run(None, feeds)[0]
    if spec["task"] == "feature-extraction":
        pooled = pool(
            output, feeds["attention_mask"], spec["pooling"], spec["normalize_embeddings"]
        )
        embeddings: list[Any] = pooled.tolist()
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
    spec = load_manifest()["runtime"]
    session = make_session(spec, args.threads)
    results = predict(session, make_tokenizer(spec), spec, texts)
    json.dump({"model": spec["model_file"], "task": spec["task"], "results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
