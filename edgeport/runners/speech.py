#!/usr/bin/env python3
"""Speech recognition on the device (Whisper): the runtime and numpy only.

    python run.py speech.wav                      # the transcript, one line per file
    python run.py a.wav b.wav --json              # {"results": [{"text": ...}, ...]}

WAV files are read with the standard library (8/16/24/32-bit PCM or 32-bit float, mono
or stereo, any sample rate, resampled in numpy), turned into Whisper's log-mel features
in numpy as the model's preprocessor_config.json says, encoded, and decoded greedily
through the decoder's KV cache (ondevice.py, the code edgeport validated the model with).
Audio longer than the model's window (30 s) is transcribed window by window and the
texts joined. The real-time factor (compute time / audio time) goes to stderr.
Written by edgeport; settings come from manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the bundle
sys.path.insert(0, str(HERE))  # the bundle's own ondevice.py, never another one
try:
    import ondevice  # type: ignore[import-not-found]
except ImportError as exc:  # a partial copy of the bundle: refuse rather than guess
    print("run.py: no ondevice.py beside run.py; copy the whole bundle", file=sys.stderr)
    raise SystemExit(2) from exc


def read_json(spec: dict[str, Any], field: str) -> dict[str, Any]:
    path = ondevice.checked_path(HERE, spec.get(field), f"runtime.{field}")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("audio", nargs="+", help="WAV files")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    spec = ondevice.runner_manifest(HERE)["runtime"]
    features_config = read_json(spec, "preprocessor")
    detokenizer = ondevice.Detokenizer(
        ondevice.checked_path(HERE, spec.get("tokenizer"), "runtime.tokenizer")
    )
    rate = int(features_config.get("sampling_rate", 16000))
    try:
        run, _ = ondevice.load_runtime(HERE, spec, args.threads)
    except ondevice.BundleError as exc:
        ondevice.refuse(str(exc), exc.exit_code)
    results = []
    compute = audio_seconds = 0.0
    for path in args.audio:
        try:
            samples = ondevice.load_audio(path, rate)
        except (OSError, ondevice.AudioError) as exc:
            ondevice.refuse(f"{path}: cannot read the audio: {exc}")
        started = time.perf_counter()
        texts = []
        for window in ondevice.whisper_windows(samples, features_config):
            features = ondevice.whisper_features(window, features_config)
            tokens = run({"input_features": features})[ondevice.TOKENS]
            texts.append(detokenizer.decode(tokens).strip())
        compute += time.perf_counter() - started
        audio_seconds += len(samples) / rate
        results.append({"text": " ".join(t for t in texts if t)})
    print(
        f"real-time factor {compute / max(audio_seconds, 1e-9):.3f} "
        f"({compute:.2f} s for {audio_seconds:.1f} s of audio)",
        file=sys.stderr,
    )
    if args.json:
        sys.stdout.write(json.dumps({"results": results}) + "\n")
        return 0
    for path, result in zip(args.audio, results, strict=True):
        print(f"{path}: {result['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
