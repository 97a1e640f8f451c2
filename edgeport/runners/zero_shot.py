#!/usr/bin/env python3
"""Zero-shot image classification on the device (CLIP, SigLIP): runtime, numpy, Pillow
and tokenizers only.

    python run.py photo.jpg --labels "a cat" "a dog"            # one line per image
    python run.py a.jpg b.jpg --labels cat dog rocket --json     # {"results": [...]}

The bundle holds two graphs: the text tower embeds the label prompts once ("This is a
photo of {label}.", the manifest's prompt_template; --template changes it), then the image
tower embeds each image, and each label is scored as the original model scores it (a
softmax over the labels for CLIP, a sigmoid per label for SigLIP). With --json, one object
{"results": [{"label": best label, "scores": {label: score}}]} with one entry per image,
in order. Images are decoded with Pillow and preprocessed in numpy exactly as the model's
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

TOKENIZER = "tokenizer.json"


def read_preprocessor(spec: dict[str, Any]) -> dict[str, Any]:
    path = ondevice.checked_path(HERE, spec.get("preprocessor"), "runtime.preprocessor")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def embed_labels(runs: dict[str, Any], spec: dict[str, Any], prompts: list[str]) -> Any:
    try:
        feeds = ondevice.encode_prompts(HERE / TOKENIZER, prompts, spec)
    except ImportError:
        ondevice.refuse("the tokenizers package is missing: pip install tokenizers", 4)
    text = next(p for p in ondevice.parts(spec) if "input_ids" in p["input_names"])
    outputs = runs[text["name"]]({name: feeds[name] for name in text["input_names"]})
    return outputs[ondevice.TEXT_EMBEDS]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, WebP, GIF)")
    parser.add_argument(
        "--labels", nargs="+", required=True, help="candidate labels, e.g. --labels cat dog"
    )
    parser.add_argument(
        "--template", default=None, help="prompt for a label (default: the manifest's)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    labels = list(dict.fromkeys(label.strip() for label in args.labels if label.strip()))
    if not labels:
        ondevice.refuse("--labels needs at least one non-empty label")
    spec = ondevice.runner_manifest(HERE)["runtime"]
    template = args.template or spec.get("prompt_template") or "{}"
    if "{}" not in template:
        ondevice.refuse(f"--template must contain {{}} where the label goes: {template!r}")
    config = read_preprocessor(spec)
    try:
        runs, _ = ondevice.load_parts(HERE, spec, args.threads)
    except ondevice.BundleError as exc:
        ondevice.refuse(str(exc), exc.exit_code)
    text_embeds = embed_labels(runs, spec, [template.replace("{}", label) for label in labels])
    image = next(p for p in ondevice.parts(spec) if "pixel_values" in p["input_names"])
    results = []
    for path in args.images:
        try:
            picture = ondevice.load_image(path)
        except OSError as exc:  # missing, unreadable or not an image
            ondevice.refuse(f"{path}: cannot read the image: {exc}")
        outputs = runs[image["name"]]({"pixel_values": ondevice.pixel_values([picture], config)})
        scores = ondevice.zero_shot_scores(outputs[ondevice.IMAGE_EMBEDS], text_embeds, spec)[0]
        best = int(scores.argmax())
        results.append(
            {
                "label": labels[best],
                "scores": {
                    label: round(float(score), 6)
                    for label, score in zip(labels, scores, strict=True)
                },
            }
        )
    if args.json:
        sys.stdout.write(json.dumps({"results": results}) + "\n")
        return 0
    for path, result in zip(args.images, results, strict=True):
        print(f"{path}: {result['label']} ({result['scores'][result['label']]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
