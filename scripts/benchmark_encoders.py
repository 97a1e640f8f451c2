#!/usr/bin/env python3
"""Where edgeport stands against the defaults users reach for, on one encoder, in one run.

For the same validation sentences (edgeport's built-in varied set, never used for
calibration) and the same batch of 32 mixed-length sentences, this builds:

  1. optimum-cli export onnx (fp32)                       -- the baseline (ratio 1.00)
  2. + optimum-cli onnxruntime quantize --<host ISA>      -- dynamic int8, optimum's preset
  3. ORT transformer fusion + dynamic int8, per-channel   -- edgeport's onnx-int8-dynamic
  4. ORT static int8 QDQ, per-channel, 18 calibration sentences
  5. optimum-cli export openvino (default)
  6. NNCF int8 post-training quantisation, default settings
  7. edgeport convert --profile PROFILE                   -- whatever edgeport ships
  8. the same recipe with the padding kept                -- what padding removal is worth

and prints latency relative to the baseline, size, and worst/mean embedding cosine
against the PyTorch original. Every latency is measured the same way (bench.py: fresh
process, warm-up, median of timed runs). Numbers, not assertions: run it, read it.

    HF_HUB_CACHE=... HF_HUB_OFFLINE=1 python scripts/benchmark_encoders.py \\
        sentence-transformers/all-MiniLM-L6-v2 --profile x86-64-avx512-vnni
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from edgeport.backends import Artifact, ExportedModel, Feeds, get_backend
from edgeport.bench import measure
from edgeport.catalog import load_catalog, load_targets
from edgeport.families.text_encoder import TextEncoder as EncoderWorkload
from edgeport.host import available_cores, features_from_cpuinfo
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.pipeline import ConvertRequest, convert
from edgeport.samples import builtin_texts
from edgeport.schemas import Candidate, ModelInfo, Recipe, Tolerance
from edgeport.text_inputs import prepare_tokenizer
from edgeport.validate import ReferenceModel


def artifact_of(directory: Path, model_file: str) -> Artifact:
    files = tuple(p.name for p in directory.iterdir() if p.name.startswith(Path(model_file).stem))
    return Artifact(directory, model_file, files, (), ())


def optimum_quantize(onnx_dir: Path, out: Path) -> Artifact:
    """What `optimum-cli onnxruntime quantize --avx512_vnni|--avx2|--arm64` does."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    flags = set(features_from_cpuinfo(Path("/proc/cpuinfo").read_text()))
    if "avx512_vnni" in flags:
        config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    elif "avx2" in flags:
        config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    else:
        config = AutoQuantizationConfig.arm64(is_static=False, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(str(onnx_dir), file_name="model.onnx")
    quantizer.quantize(save_dir=str(out), quantization_config=config)
    return artifact_of(out, "model_quantized.onnx")


def optimum_openvino(model_dir: Path, task: str, out: Path) -> Artifact:
    """What `optimum-cli export openvino` does with default settings."""
    from optimum.exporters.openvino import main_export

    main_export(str(model_dir), str(out), task=task, library_name="transformers")
    return artifact_of(out, "openvino_model.xml")


def nncf_default(ov_dir: Path, calibration: list[Feeds], out: Path) -> Artifact:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ov_dir / "openvino_model.xml"))
    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset(calibration, lambda feeds: {n: feeds[n] for n in names})
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / "openvino_model.xml"))
    return artifact_of(out, "openvino_model.xml")


def with_padding(recipe: Recipe) -> Recipe:
    """`recipe` as peers run it: the padding kept."""
    graph = recipe.graph.model_copy(update={"remove_padding": False})
    return recipe.model_copy(update={"graph": graph})


def edgeport_recipe(
    recipe: Recipe,
    exported: ExportedModel,
    info: ModelInfo,
    calibration: list[Feeds],
    out: Path,
) -> Artifact:
    """One recipe built by edgeport's backend as it is, without search or fallback."""
    target = load_catalog().targets[recipe.target]
    candidate = Candidate(
        recipe=recipe,
        target=target,
        device=target.devices[0],
        estimated_memory_mb=0.0,
        estimated_size_mb=0.0,
        estimated_speedup=1.0,
        reason="benchmark row",
    )
    built = get_backend(target).build(exported, candidate, info, calibration, out)
    return artifact_of(built.directory, built.model_file)  # sized like the other rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="Hub id or folder of a text encoder")
    parser.add_argument("--profile", default="x86-64-avx512-vnni")
    parser.add_argument("--threads", type=int, default=min(2, available_cores()))
    parser.add_argument("--rounds", type=int, default=3, help="paired measurements per row")
    args = parser.parse_args()

    resolved = resolve(args.model)
    info = inspect_model(resolved)
    samples = builtin_texts("encoder")
    workload = EncoderWorkload()
    rows: list[tuple[str, str, Artifact]] = []
    with tempfile.TemporaryDirectory(prefix="edgeport-bench-") as tmp:
        work = Path(tmp)
        targets = load_targets()
        ort_backend = get_backend(targets["onnxruntime"])
        exported = ort_backend.export(info, work / "onnx", trust_remote_code=False)
        tokenizer_dir = prepare_tokenizer(info, work, trust_remote_code=False)
        prepared = workload.prepare(
            info, tokenizer_dir, samples, exported, ReferenceModel(info, trust_remote_code=False)
        )
        with contextlib.redirect_stdout(sys.stderr):
            rows.append(
                (
                    "optimum-cli export onnx (fp32)",
                    "onnxruntime",
                    artifact_of(exported.directory, "model.onnx"),
                )
            )
            rows.append(
                (
                    "+ optimum-cli onnxruntime quantize (host preset)",
                    "onnxruntime",
                    optimum_quantize(exported.directory, work / "onnx-q"),
                )
            )
            catalog = load_catalog()
            rows.append(
                (
                    "ORT transformer fusion + dynamic int8, per-channel",
                    "onnxruntime",
                    edgeport_recipe(
                        with_padding(catalog.recipe("onnx-int8-dynamic")),
                        exported,
                        info,
                        [],
                        work / "dyn",
                    ),
                )
            )
            rows.append(
                (
                    "ORT static int8 QDQ, per-channel, 18 calibration sentences",
                    "onnxruntime",
                    edgeport_recipe(
                        catalog.recipe("onnx-int8-static-qdq"),
                        exported,
                        info,
                        prepared.calibration[:18],
                        work / "qdq",
                    ),
                )
            )
            ov_default = optimum_openvino(info.local_path, info.task, work / "ov")
            rows.append(("optimum-cli export openvino (default)", "openvino", ov_default))
            rows.append(
                (
                    "NNCF int8 PTQ, default settings",
                    "openvino",
                    nncf_default(work / "ov", prepared.calibration, work / "ov-nncf"),
                )
            )
            result = convert(
                ConvertRequest(model=args.model, profile=args.profile, out=work / "bundle")
            )
        if result.bundle is None or result.chosen is None:
            print(f"edgeport shipped nothing: {result.verdict}", file=sys.stderr)
            return 3
        manifest = json.loads((result.bundle / "manifest.json").read_text())
        variant = f", {result.chosen.variant}" if result.chosen.variant else ""
        rows.append(
            (
                f"edgeport ({result.chosen.recipe_id}{variant})",
                result.chosen.target_id,
                artifact_of(result.bundle, manifest["runtime"]["model_file"]),
            )
        )
        shipped = Recipe.model_validate(manifest["recipe"])
        if shipped.graph.remove_padding:
            padded = with_padding(shipped)
            with contextlib.redirect_stdout(sys.stderr):
                own_export = get_backend(targets[shipped.target]).export(
                    info, work / "edgeport-export", trust_remote_code=False
                )
                rows.append(
                    (
                        "  the same model with the padding kept",
                        shipped.target,
                        edgeport_recipe(
                            padded, own_export, info, prepared.calibration, work / "padded"
                        ),
                    )
                )

        tolerance = Tolerance(embedding_cosine_min=0.99)
        feeds = prepared.bench.feeds
        baseline = rows[0][2]
        table = []
        for name, target, artifact in rows:
            backend = get_backend(targets[target])
            session = backend.load(
                artifact, "CPU" if target == "openvino" else "CPUExecutionProvider", args.threads
            )
            report = workload.validate(info, session, prepared.evaluation, tolerance)
            del session
            # Back-to-back (baseline, row) pairs: background load drifts, pairs cancel it.
            ratios = sorted(
                measure(artifact, targets[target], "CPU", args.threads, feeds).latency_ms
                / measure(baseline, targets["onnxruntime"], "CPU", args.threads, feeds).latency_ms
                for _ in range(args.rounds)
            )
            size = sum((artifact.directory / f).stat().st_size for f in artifact.files)
            table.append(
                (
                    name,
                    ratios[len(ratios) // 2],
                    size / 2**20,
                    report.metric("embedding_cosine_min"),
                    report.metric("embedding_cosine_mean"),
                )
            )

    print(
        f"\n{args.model}: {len(samples.validation)} validation sentences, "
        f"batch of 32, {args.threads} threads; latency: median of {args.rounds} "
        "back-to-back pairs with the baseline\n"
    )
    print("| what a user would run | latency vs ORT fp32 | size MB | worst cosine | mean cosine |")
    print("| --- | --- | --- | --- | --- |")
    for name, ratio, megabytes, worst, mean in table:
        print(f"| {name} | {ratio:.2f} | {megabytes:.1f} | {worst:.4f} | {mean:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
