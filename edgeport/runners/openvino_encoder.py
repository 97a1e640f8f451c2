#!/usr/bin/env python3
"""Run this bundle's encoder on the device with OpenVINO and numpy only.

    python run.py "some text" "another text"      # JSON embeddings (or labels) on stdout
    echo "some text" | python run.py -            # texts from stdin, one per line
    python run.py --device CPU "some text"        # override the device from manifest.json

Texts are tokenised by openvino_tokenizer.xml (openvino-tokenizers) when the bundle has
it, else by tokenizer.json (tokenizers). Written by edgeport; settings come from
manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc
TOKENIZER_IR = "openvino_tokenizer.xml"
Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


def make_tokenizer(spec: dict[str, Any]) -> Tokenize:
    if (HERE / TOKENIZER_IR).is_file():
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

        # Only Cores created after that import know the tokenizer operations.
        compiled = ov.Core().compile_model(str(HERE / TOKENIZER_IR), "CPU")

        def tokenize_ir(texts: list[str]) -> dict[str, np.ndarray]:
            result = compiled(texts)
            return {
                port.get_any_name(): np.asarray(result[port], dtype=np.int64)
                for port in compiled.outputs
            }

        return tokenize_ir

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=spec["max_length"])
    tokenizer.enable_padding(pad_id=spec.get("pad_token_id", 0))

    def tokenize_json(texts: list[str]) -> dict[str, np.ndarray]:
        encodings = tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    return tokenize_json


def make_model(spec: dict[str, Any], device: str | None, threads: int | None) -> tuple[Any, str]:
    """(compiled model, device): `device`, else the manifest's first one this machine has."""
    compiled: tuple[Any, str] = ondevice.openvino_compiled(
        HERE / spec["model_file"],
        ondevice.spec_threads(spec, threads),
        [device] if device else spec.get("providers") or [spec["device"]],
    )
    return compiled


def encode(tokenize: Tokenize, texts: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    feeds = tokenize(texts)
    if "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return {name: feeds[name] for name in input_names}


def predict(model: Any, tokenize: Tokenize, spec: dict[str, Any], texts: list[str]) -> list[Any]:
    feeds = encode(tokenize, texts, spec["input_names"])
    output = np.asarray(model(feeds)[model.outputs[0]])
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
    parser.add_argument("--device", default=None, help="OpenVINO device (CPU, GPU, NPU)")
    args = parser.parse_args()
    texts = args.texts
    if texts == ["-"] or not texts:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        parser.error("give at least one text")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    model, device = make_model(spec, args.device, args.threads)
    results = predict(model, make_tokenizer(spec), spec, texts)
    json.dump(
        {"model": spec["model_file"], "task": spec["task"], "device": device, "results": results},
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
