#!/usr/bin/env python3
"""Run this bundle's vision model on the device: its runtime, numpy and Pillow only.

    python run.py photo.jpg [more.png ...]          # one line per image
    python run.py photo.jpg other.jpg --json        # {"results": [...]} on stdout

Classifiers give, per image, {"label": str, "score": float, "logits": [float, ...]} (score:
the label's softmax probability); embedding models give the vector. Images are decoded
with Pillow and resized, cropped and normalised in numpy exactly as the model's
preprocessor_config.json says (ondevice.py, the code edgeport validated the model with).
Written by edgeport; settings come from manifest.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def read_preprocessor(spec: dict[str, Any]) -> dict[str, Any]:
    path = ondevice.checked_path(HERE, spec.get("preprocessor"), "runtime.preprocessor")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def predict(run: Any, spec: dict[str, Any], config: dict[str, Any], path: str) -> Any:
    try:
        image = ondevice.load_image(path)
    except OSError as exc:  # missing, unreadable or not an image
        ondevice.refuse(f"{path}: cannot read the image: {exc}")
    outputs = run({spec["input_names"][0]: ondevice.pixel_values([image], config)})
    if spec["task"] == "image-classification":
        logits = outputs[spec["output_names"][0]][0]
        best = int(logits.argmax())
        labels = spec.get("labels") or {}
        return {
            "label": labels.get(str(best), str(best)),
            "score": round(float(ondevice.softmax(logits)[best]), 6),
            "logits": [float(v) for v in logits],
        }
    embedding = ondevice.image_embedding(outputs, spec["embedding_output"])[0]
    return [float(v) for v in embedding]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, WebP, GIF)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    spec = ondevice.runner_manifest(HERE)["runtime"]
    config = read_preprocessor(spec)
    try:
        run, _ = ondevice.load_runtime(HERE, spec, args.threads)
    except ondevice.BundleError as exc:
        ondevice.refuse(str(exc), exc.exit_code)
    results = [predict(run, spec, config, path) for path in args.images]
    if args.json:
        sys.stdout.write(json.dumps({"results": results}) + "\n")
        return 0
    for path, result in zip(args.images, results, strict=True):
        if isinstance(result, dict):
            print(f"{path}: {result['label']} ({result['score']:.3f})")
        else:
            print(f"{path}: embedding of {len(result)} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
