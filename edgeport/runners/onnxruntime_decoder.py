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
PAST = "past_key_values."
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Decoder:
    def __init__(self, spec: dict[str, Any], threads: int | None) -> None:
        self.session = ondevice.onnxruntime_session(
            HERE / spec["model_file"], threads or spec["threads"], spec.get("providers") or ()
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past_specs = [
            (i.name, i.shape[1], i.shape[3], _DTYPES.get(i.type, np.float32))
            for i in self.session.get_inputs()
            if i.name.startswith(PAST)
        ]

    def generate(self, prompt: list[int], max_new_tokens: int, stop: set[int]) -> Iterator[int]:
        """Greedy decoding; the cache stays in ONNX Runtime's buffers (IO binding): each
        step's present.* values are bound as the next step's past_key_values.* as they are."""
        binding = self.session.io_binding()
        past = {
            name: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, dim), dtype=dtype))
            for name, heads, dim, dtype in self.past_specs
        }
        ids = np.array([prompt], dtype=np.int64)
        length = 0
        for _ in range(max_new_tokens):
            total = length + ids.shape[1]
            feeds = {"input_ids": ids}
            if "attention_mask" in self.inputs:
                feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
            if "position_ids" in self.inputs:
                feeds["position_ids"] = np.arange(length, total, dtype=np.int64)[None]
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            for name, value in past.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            results = dict(zip(self.outputs, binding.get_outputs(), strict=True))
            past = {name: results[name.replace(PAST, "present.", 1)] for name in past}
            length = total
            token = int(results["logits"].numpy()[0, -1].argmax())
            yield token
            if token in stop:
                return
            ids = np.array([[token]], dtype=np.int64)


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
