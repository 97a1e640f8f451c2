#!/usr/bin/env python3
"""Generate text with this bundle's language model: llama-cpp-python and numpy only.

    python run.py "The with statement is used to" --max-new-tokens 32
    echo "A prompt" | python run.py -
    python run.py --threads 4 "A prompt"

Streams the continuation on stdout (greedy decoding through llama.cpp's KV cache), then
prints time to first token and tokens per second on stderr (`--json` prints them as one
JSON object on stdout instead of the text). Tokenises with the vocabulary inside
model.gguf (llama.cpp's own tokenizer), adding BOS where the model's metadata says so.
Written by edgeport; settings come from manifest.json beside this file. The same file
runs in llama.cpp's own tools: see README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc


class Decoder:
    def __init__(self, spec: dict[str, Any], threads: int | None, context: int) -> None:
        try:
            self.model = ondevice.llama_cpp_model(
                HERE / spec["model_file"],
                ondevice.spec_threads(spec, threads),
                context,
                all_logits=False,
            )
        except ondevice.BundleError as exc:
            ondevice.refuse(str(exc), exc.exit_code)
        except (ValueError, RuntimeError, OSError) as exc:
            message = " ".join(str(exc).split())
            ondevice.refuse(f"llama.cpp cannot load {spec['model_file']}: {message}", 3)
        self.device = "CPU"

    def encode(self, text: str) -> list[int]:
        # add_bos=True follows the GGUF's tokenizer.ggml.add_bos_token.
        return [int(t) for t in self.model.tokenize(text.encode("utf-8"), add_bos=True)]

    def decode(self, tokens: list[int]) -> str:
        return bytes(self.model.detokenize(tokens)).decode("utf-8", errors="replace")

    def generate(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> Iterator[int]:
        self.model.reset()  # a fresh KV cache
        self.model.eval(prompt)
        for _ in range(max_new_tokens):
            token = int(np.argmax(ondevice.llama_cpp_last_logits(self.model)))
            yield token
            if token in stop or self.model.n_tokens >= self.model.n_ctx():
                return
            self.model.eval([token])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' reads stdin")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="KV cache size in tokens (prompt + new); default 2048, or the model's own context "
        "when shorter",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        parser.error("give a prompt")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    trained = int(spec.get("max_length") or 0)
    context = args.context or (min(2048, trained) if trained else 2048)
    decoder = Decoder(spec, args.threads, context)
    prompt_ids = decoder.encode(prompt)
    if len(prompt_ids) >= decoder.model.n_ctx():
        ondevice.refuse(f"the prompt has {len(prompt_ids)} tokens; raise --context", 2)
    stop = set(spec.get("eos_token_ids") or [])

    ondevice.stream_generation(
        decoder.generate(prompt_ids, args.max_new_tokens, stop),
        decoder.decode,
        len(prompt_ids),
        as_json=args.json,
        device=f"{decoder.device} (llama.cpp)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
