#!/usr/bin/env python3
"""Translation and text-to-text generation on the device (T5, BART): the runtime, numpy
and tokenizers only.

    python run.py "The small cat sees the red car."          # one line per text
    python run.py "first text" "second text" --json           # {"results": [{"text": ...}]}

Each text is tokenised with the bundle's tokenizer.json, encoded, and decoded greedily
through the decoder's KV cache (ondevice.py, the code edgeport validated the model with).
Tokens per second go to stderr. Written by edgeport; settings come from manifest.json
beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc

MAX_SOURCE_TOKENS = 512


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+", help="texts to translate")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    spec = ondevice.runner_manifest(HERE)["runtime"]
    path = ondevice.checked_path(HERE, spec.get("tokenizer"), "runtime.tokenizer")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        ondevice.refuse("the tokenizers package is missing: pip install tokenizers", 4)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_SOURCE_TOKENS)
    detokenizer = ondevice.Detokenizer(path)
    try:
        run, _ = ondevice.load_runtime(HERE, spec, args.threads)
    except ondevice.BundleError as exc:
        ondevice.refuse(str(exc), exc.exit_code)
    results = []
    started, generated = time.perf_counter(), 0
    for text in args.texts:
        ids = ondevice.np.array([tokenizer.encode(text).ids], dtype=ondevice.np.int64)
        tokens = run({"input_ids": ids, "attention_mask": ondevice.np.ones_like(ids)})
        generated += len(tokens[ondevice.TOKENS])
        results.append({"text": detokenizer.decode(tokens[ondevice.TOKENS]).strip()})
    seconds = time.perf_counter() - started
    print(
        f"{generated / max(seconds, 1e-9):.1f} tokens/s ({generated} in {seconds:.2f} s)",
        file=sys.stderr,
    )
    if args.json:
        sys.stdout.write(json.dumps({"results": results}) + "\n")
        return 0
    for result in results:
        print(result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
