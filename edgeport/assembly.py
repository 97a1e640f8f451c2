"""What goes into a bundle once the search is done: report, plot, manifest, runner, files.

bundle.py writes a folder safely (whole or not at all, never over the wrong folder) and
knows the bundle's file names; this module decides the content: the chosen artifact, the
family's processor files and golden data, run.py/verify.py/ondevice.py, requirements.txt
pinned to the runtime validated with, report.md and the trade-off plot, and the sealed
manifest. Kept apart from bundle.py, which archive.py and device.py import, so that they
do not pull in the families and the report.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport import __version__
from edgeport.bundle import (
    DEVICE_MODULE,
    REPORT,
    REQUIREMENTS,
    RUNNER,
    TRADEOFF_IMAGE,
    VERIFIER,
    VERIFIER_TEMPLATE,
    BundleWriter,
    runner_source,
)
from edgeport.errors import UnsupportedError
from edgeport.families import Family, family_of
from edgeport.report import render_report, tradeoff_axes
from edgeport.reproducibility import with_reproducibility
from edgeport.schemas import Manifest, PartSpec, RuntimeSpec
from edgeport.tradeoff_plot import render_tradeoff_svg

if TYPE_CHECKING:
    from edgeport.backends import Artifact
    from edgeport.planner import Objective
    from edgeport.schemas import Attempt, Candidate, Plan
    from edgeport.validate import Evaluation

_VERSION_PACKAGES = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "huggingface-hub",
    "openvino",
    "openvino-tokenizers",
    "nncf",
    "optimum-intel",
    "gguf",
    "llama-cpp-python",
)


def library_versions() -> dict[str, str]:
    """The versions the conversion ran with, for the manifest, the report and the pins."""
    versions = {"edgeport": __version__}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def render_outcome(
    the_plan: Plan,
    attempts: list[Attempt],
    chosen: Attempt | None,
    verdict: str,
    versions: dict[str, str],
    samples_description: str,
    objective: Objective,
    *,
    baseline: str,
    speed_note: str,
) -> tuple[str, str | None]:
    """report.md's text and the trade-off plot (None when there is nothing to plot).
    `baseline` names what every latency ratio divides by ("ONNX Runtime fp32")."""
    axes = tradeoff_axes(attempts)
    tradeoff_svg = render_tradeoff_svg(attempts, chosen, *axes, baseline=baseline) if axes else None
    report_text = render_report(
        the_plan,
        attempts,
        chosen,
        verdict,
        versions,
        samples_description,
        objective,
        TRADEOFF_IMAGE if tradeoff_svg and chosen is not None else None,
        speed_note=speed_note,
        baseline=baseline,
    )
    return report_text, tradeoff_svg


def write_failed_report(out: Path, report_text: str) -> Path:
    """Nothing ships: the report goes beside where the bundle would have been."""
    report_path = out.with_name(f"{out.name}.report.md")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report_text, encoding="utf-8")
    return report_path


def write_bundle(
    out: Path,
    the_plan: Plan,
    candidate: Candidate,
    artifact: Artifact,
    chosen: Attempt,
    attempts: list[Attempt],
    verdict: str,
    *,
    processor_dir: Path,
    versions: dict[str, str],
    report_text: str,
    evaluation: Evaluation | None = None,
    samples: Any = None,
    tradeoff_svg: str | None = None,
    speed_note: str = "",
    force: bool = False,
    protected: tuple[Path, ...] = (),
) -> Path:
    """Write the bundle of `candidate` (the recipe as it ran) at `out`; its path.

    `force` and `protected` are bundle.check_destination's: what may be replaced, and the
    folders (the model's own) that never may.
    """
    info, profile = the_plan.model, the_plan.profile
    family = family_of(info)
    template = family.runner_template(candidate.target.runner)
    if template is None:
        raise UnsupportedError(
            f"no on-device runner for {candidate.target.id} {info.family} models yet"
        )
    runtime_devices = profile.runtime(candidate.target.id)
    with BundleWriter(out, force=force, protected=protected) as writer:
        for part in artifact.single_parts():
            for name in part.files:
                writer.copy(part.directory / name)
        for path in family.processor_files(processor_dir):
            writer.copy(path)
        writer.write_text(RUNNER, runner_source(template))
        writer.write_text(VERIFIER, runner_source(VERIFIER_TEMPLATE))
        writer.write_text(DEVICE_MODULE, runner_source(DEVICE_MODULE))
        golden = None
        if evaluation is not None and samples is not None:
            golden = family.write_golden(
                writer.root,
                info,
                evaluation,
                samples,
                candidate.recipe.tolerance,
                artifact.input_names,
                artifact.output_names,
            )
        writer.write_text(REQUIREMENTS, _requirements(candidate, family, versions))
        writer.write_text(REPORT, report_text)
        if tradeoff_svg:
            writer.write_text(TRADEOFF_IMAGE, tradeoff_svg)
        runtime = RuntimeSpec(
            target=candidate.target.id,
            runner=candidate.target.runner,
            device=candidate.device,
            task=info.task,
            model_file=artifact.model_file,
            input_names=list(artifact.input_names),
            output_names=list(artifact.output_names),
            threads=profile.cpu.cores,
            precision=candidate.recipe.precision,
            providers=list(runtime_devices.devices) if runtime_devices else [candidate.device],
            parts=[
                PartSpec(
                    name=part.part,
                    model_file=part.model_file,
                    files=list(part.files),
                    input_names=list(part.input_names),
                    output_names=list(part.output_names),
                    precision=part.precision or candidate.recipe.precision,
                )
                for part in artifact.parts
            ],
            **family.runtime_fields(info, processor_dir, artifact.output_names),
        )
        metrics = {m.name: m.value for m in chosen.validation.metrics} if chosen.validation else {}
        entries = writer.file_entries()
        if chosen.latency_ratio is not None:
            metrics["latency_ratio_vs_fp32"] = chosen.latency_ratio
        measured = chosen.measurement
        if measured is not None and measured.tokens_per_s is not None:
            metrics["tokens_per_s"] = round(measured.tokens_per_s, 2)
        if measured is not None and measured.time_to_first_token_ms is not None:
            metrics["time_to_first_token_ms"] = round(measured.time_to_first_token_ms, 2)
        manifest = Manifest(
            edgeport_version=__version__,
            model={
                "id": info.display_name,
                "source": info.source,
                "revision": info.revision,
                "commit": info.commit,
                "task": info.task,
                "model_type": info.model_type,
                "parameters": info.parameter_count,
            },
            profile=profile,
            recipe=candidate.recipe,
            runtime=runtime,
            versions=versions,
            verdict=verdict,
            metrics=metrics,
            tolerance=candidate.recipe.tolerance,
            excluded_nodes=chosen.excluded_nodes,
            attempts=attempts,
            files=entries,
            # What the recipe did (precision of embeddings, lm_head, kept layers), then
            # how it was validated.
            notes=[
                *artifact.notes,
                *(chosen.validation.notes if chosen.validation else []),
                *([speed_note] if speed_note else []),
            ],
            golden=golden,
        )
        writer.write_manifest(with_reproducibility(manifest))
        return writer.commit()


def _requirements(candidate: Candidate, family: Family, versions: dict[str, str]) -> str:
    """The target's runtime (at the version validated with) and numpy, then the family's."""
    lines = [
        "# What run.py needs on the device; the runtime version is the one edgeport validated with."
    ]
    packages = [*candidate.target.device_packages, *family.device_packages(candidate.target.runner)]
    for index, package in enumerate(dict.fromkeys(packages)):
        version = versions.get(package)
        lines.append(f"{package}=={version}" if index == 0 and version else package)
    return "\n".join(lines) + "\n"
