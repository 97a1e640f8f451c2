#!/usr/bin/env python3
"""Generate text with this bundle's language model: OpenVINO and numpy only.

    python run.py "The with statement is used to" --max-new-tokens 32
    echo "A prompt" | python run.py -
    python run.py --device CPU "A prompt"          # override the device from manifest.json

Streams the continuation on stdout (greedy decoding; the KV cache is the stateful
model's internal state), then prints time to first token and tokens per second on
stderr (`--json` prints them as one JSON object on stdout instead of the text).
Tokenises with openvino_tokenizer.xml / openvino_detokenizer.xml (openvino-tokenizers)
when the bundle has them, else with tokenizer.json (tokenizers). Written by edgeport;
settings come from manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
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
DETOKENIZER_IR = "openvino_detokenizer.xml"


def make_text_codec() -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """(encode, decode): openvino-tokenizers IR when present and importable, else tokenizers."""
    if (HERE / TOKENIZER_IR).is_file() and (HERE / DETOKENIZER_IR).is_file():
        try:
            import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)
        except ImportError:
            pass
        else:
            core = ov.Core()  # created after the import, so it knows the tokenizer ops
            tokenizer = core.compile_model(str(HERE / TOKENIZER_IR), "CPU")
            detokenizer = core.compile_model(str(HERE / DETOKENIZER_IR), "CPU")

            def encode_ir(text: str) -> list[int]:
                result = tokenizer([text])
                return [int(t) for t in np.asarray(result["input_ids"]).reshape(-1)]

            def decode_ir(tokens: list[int]) -> str:
                result = detokenizer(np.array([tokens], dtype=np.int64))
                return str(np.asarray(result[detokenizer.outputs[0]]).reshape(-1)[0])

            return encode_ir, decode_ir
    from tokenizers import Tokenizer

    text_tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    text_tokenizer.no_truncation()
    text_tokenizer.no_padding()
    return (lambda text: text_tokenizer.encode(text).ids), text_tokenizer.decode


class Decoder:
    def __init__(self, spec: dict[str, Any], device: str | None, threads: int | None) -> None:
        core = ov.Core()
        self.device = ondevice.openvino_device(
            core, [device] if device else spec.get("providers") or [spec["device"]]
        )
        # The prompt through the exported graph, each new token through a one-token compile
        # of it (ondevice.OpenVinoLanguageModel says why).
        self.model = ondevice.OpenVinoLanguageModel(
            HERE / spec["model_file"],
            self.device,
            ondevice.openvino_config(self.device, ondevice.spec_threads(spec, threads)),
        )
        self.model.warm_up()

    def generate(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> Iterator[int]:
        yield from ondevice.greedy_tokens(self.model.tokens(prompt), max_new_tokens, stop)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' reads stdin")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        parser.error("give a prompt")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    encode, decode = make_text_codec()
    decoder = Decoder(spec, args.device, args.threads)
    prompt_ids = encode(prompt)
    stop = set(spec.get("eos_token_ids") or [])

    ondevice.stream_generation(
        decoder.generate(prompt_ids, args.max_new_tokens, stop),
        decode,
        len(prompt_ids),
        as_json=args.json,
        device=decoder.device,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
