#!/usr/bin/env python3
"""Generate text with this bundle's language model: ONNX Runtime, tokenizers and numpy only.

    python run.py "The with statement is used to" --max-new-tokens 32
    echo "A prompt" | python run.py -

Streams the continuation on stdout (greedy decoding through the KV cache), then prints
time to first token and tokens per second on stderr (`--json` prints them as one JSON
object on stdout instead of the text). Written by edgeport; settings come from
manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc


class Decoder:
    def __init__(self, spec: dict[str, Any], threads: int | None) -> None:
        try:
            self.session = ondevice.onnxruntime_session(
                HERE / spec["model_file"],
                ondevice.spec_threads(spec, threads),
                spec.get("providers") or (),
            )
        except ondevice.BundleError as exc:  # onnxruntime missing: one line, its exit code
            ondevice.refuse(str(exc), exc.exit_code)

    def generate(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> Iterator[int]:
        """Greedy decoding through the KV cache, kept in ONNX Runtime's own buffers."""
        tokens = ondevice.onnxruntime_greedy_tokens(self.session, prompt)
        yield from ondevice.greedy_tokens(tokens, max_new_tokens, stop)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' reads stdin")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        parser.error("give a prompt")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    decoder = Decoder(spec, args.threads)
    prompt_ids = tokenizer.encode(prompt).ids
    stop = set(spec.get("eos_token_ids") or [])

    ondevice.stream_generation(
        decoder.generate(prompt_ids, args.max_new_tokens, stop),
        tokenizer.decode,
        len(prompt_ids),
        as_json=args.json,
        device="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
