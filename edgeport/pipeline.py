"""The only place that orders the stages: resolve, inspect, plan, evaluate candidates, bundle.

Candidates are evaluated in plan order (export once per target, then optimise, quantise,
validate against PyTorch and measure on this host), every result is kept, and the winner
for the objective is chosen among those that pass their recipe's tolerance. A candidate
that misses it is never shipped unless the user accepts degradation explicitly.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeport import __version__
from edgeport.backends import Artifact, ExportedModel, Feeds, get_backend, host_targets
from edgeport.bundle import (
    REPORT,
    REQUIREMENTS,
    RUNNER,
    VERIFIER,
    VERIFIER_TEMPLATE,
    BundleWriter,
    check_destination,
    runner_source,
)
from edgeport.catalog import Catalog, load_catalog
from edgeport.errors import DoesNotFitError, EdgeportError, UnsupportedError
from edgeport.host import available_cores
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import Objective, plan
from edgeport.report import render_report
from edgeport.samples import SampleSet, load_samples
from edgeport.schemas import (
    Attempt,
    Candidate,
    ConversionResult,
    Manifest,
    Measurement,
    ModelInfo,
    Plan,
    RuntimeSpec,
)
from edgeport.text_inputs import TextEncoder, prepare_tokenizer, tokenizer_files
from edgeport.validate import Evaluation, ReferenceModel, compare, primary_metric, run_batches

log = logging.getLogger("edgeport")

VALIDATION_BATCH = 16
BENCH_BATCH = 32
BASELINE_KEY = "onnxruntime-fp32-baseline"
RUNNER_TEMPLATES = {
    ("onnxruntime", "encoder"): "onnxruntime_encoder.py",
    ("openvino", "encoder"): "openvino_encoder.py",
}
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
)


class Progress(Protocol):
    def stage(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...


class SilentProgress:
    def stage(self, message: str) -> None:
        log.info(message)

    def info(self, message: str) -> None:
        log.info(message)


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    profile: str
    out: Path | None = None
    revision: str | None = None
    task: str | None = None
    samples: Path | None = None
    recipes: frozenset[str] | None = None
    objective: Objective = "latency"
    search_budget_s: float = 1200.0
    accept_degraded: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    force: bool = False
    profiles_dirs: tuple[Path, ...] = ()
    recipes_dirs: tuple[Path, ...] = ()
    catalog: Catalog | None = field(default=None, compare=False)
    # Reuse fp32 exports across convert calls (edgeport build): a folder keyed by model,
    # commit, target and task; None exports afresh into the temporary work folder.
    export_cache: Path | None = None


def library_versions() -> dict[str, str]:
    versions = {"edgeport": __version__}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def default_out(model: ModelInfo, profile_id: str) -> Path:
    name = model.display_name.rstrip("/").split("/")[-1]
    return Path("bundles") / f"{name}-{profile_id}"


def make_plan(request: ConvertRequest, progress: Progress) -> Plan:
    catalog = request.catalog or load_catalog(request.profiles_dirs, request.recipes_dirs)
    profile = catalog.profile(request.profile)
    progress.stage(f"Resolving {request.model}")
    resolved = resolve(
        request.model,
        request.revision,
        trust_remote_code=request.trust_remote_code,
        allow_pickle=request.allow_pickle,
    )
    info = inspect_model(resolved, request.task)
    if request.recipes:
        for name in request.recipes:
            catalog.recipe(name)  # unknown names are bad input, not an empty plan
    return plan(
        info,
        profile,
        catalog.recipes.values(),
        catalog.targets,
        host_targets(catalog.targets.values()),
        objective=request.objective,
        only_recipes=request.recipes,
    )


def explain_empty_plan(result: Plan) -> EdgeportError:
    reasons = "; ".join(f"{d.recipe_id}: {d.reason}" for d in result.dropped) or "no recipes"
    codes = {d.code for d in result.dropped}
    if codes and codes <= {"memory"}:
        return DoesNotFitError(f"nothing fits {result.profile.id}: {reasons}")
    return UnsupportedError(f"no candidate for {result.profile.id}: {reasons}")


class CandidateEvaluator:
    """Export once per target, then build, validate and measure each candidate."""

    def __init__(
        self,
        info: ModelInfo,
        evaluation: Evaluation,
        calibration: Sequence[Feeds],
        bench_feeds: Feeds,
        threads: int,
        workdir: Path,
        trust_remote_code: bool,
        progress: Progress,
        export_cache: Path | None = None,
    ) -> None:
        self.export_cache = export_cache
        self.info = info
        self.evaluation = evaluation
        self.calibration = calibration
        self.bench_feeds = bench_feeds
        self.threads = threads
        self.workdir = workdir
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self._exports: dict[str, ExportedModel] = {}
        self.artifacts: dict[str, Artifact] = {}

    def export(self, target_id: str) -> ExportedModel:
        if target_id not in self._exports:
            self.progress.info(f"exporting to {target_id} (fp32)")
            self._exports[target_id] = _export(
                target_id,
                self.info,
                self.workdir / target_id,
                self.trust_remote_code,
                self.export_cache,
            )
        return self._exports[target_id]

    def baseline(self) -> Measurement:
        """ONNX Runtime fp32, the yardstick every latency ratio divides by."""
        exported = self.export("onnxruntime")
        artifact = Artifact(
            exported.directory,
            exported.model_file,
            (exported.model_file,),
            exported.input_names,
            exported.output_names,
        )
        return _measure(
            artifact, "onnxruntime", "CPUExecutionProvider", self.threads, self.bench_feeds
        )

    def evaluate(self, candidate: Candidate, baseline: Measurement | None) -> Attempt:
        started = time.monotonic()
        recipe = candidate.recipe
        common = {
            "recipe_id": recipe.id,
            "target_id": candidate.target.id,
            "device": candidate.device,
            "precision": recipe.precision,
        }
        try:
            backend = get_backend(candidate.target.id)
            exported = self.export(candidate.target.id)
            self.progress.info(f"{recipe.id}: optimising and quantising")
            artifact = backend.build(
                exported,
                candidate,
                self.info,
                self.calibration,
                self.workdir / "candidates" / recipe.id,
            )
            self.progress.info(f"{recipe.id}: validating against PyTorch")
            session = backend.load(artifact, candidate.device, self.threads)
            outputs = run_batches(session.run, self.evaluation.batches)
            del session
            report = compare(self.info, self.evaluation, outputs, recipe.tolerance)
            self.progress.info(f"{recipe.id}: measuring latency")
            measurement = _measure(
                artifact, candidate.target.id, candidate.device, self.threads, self.bench_feeds
            )
        except EdgeportError as exc:
            return Attempt(
                status="error", detail=str(exc), duration_s=time.monotonic() - started, **common
            )
        except Exception as exc:  # a backend bug must not hide the other candidates' results
            log.debug("candidate %s crashed", recipe.id, exc_info=True)
            return Attempt(
                status="error",
                detail=f"{type(exc).__name__}: {exc}",
                duration_s=time.monotonic() - started,
                **common,
            )
        self.artifacts[recipe.id] = artifact
        notes = list(artifact.notes)
        ratio = measurement.latency_ms / baseline.latency_ms if baseline else None
        return Attempt(
            status="passed" if report.passed else "failed",
            detail="; ".join([*report.failures, *notes]),
            validation=report,
            measurement=measurement,
            latency_ratio=round(ratio, 4) if ratio is not None else None,
            excluded_nodes=list(artifact.excluded_nodes),
            duration_s=round(time.monotonic() - started, 2),
            artifact_dir=artifact.directory,
            **common,
        )


def _measure(
    artifact: Artifact, target_id: str, device: str, threads: int, feeds: Feeds
) -> Measurement:
    from edgeport.bench import measure

    return measure(artifact, target_id, device, threads, feeds)


def _latency(attempt: Attempt) -> float:
    return attempt.measurement.latency_ms if attempt.measurement else float("inf")


def _size(attempt: Attempt) -> float:
    return attempt.measurement.model_bytes if attempt.measurement else float("inf")


def _accuracy(attempt: Attempt) -> float:
    return primary_metric(attempt.validation) if attempt.validation else float("-inf")


def choose(attempts: Sequence[Attempt], objective: Objective) -> Attempt | None:
    """The winner among candidates that passed, by measured numbers on this host."""
    passed = [a for a in attempts if a.status == "passed" and a.measurement and a.validation]
    if not passed:
        return None
    if objective == "size":
        return min(passed, key=lambda a: (_size(a), _latency(a)))
    if objective == "accuracy":
        return max(passed, key=lambda a: (_accuracy(a), -_latency(a)))
    return min(passed, key=_latency)


def best_failed(attempts: Sequence[Attempt]) -> Attempt | None:
    measured = [a for a in attempts if a.status == "failed" and a.validation and a.measurement]
    return max(measured, key=_accuracy) if measured else None


def build_evaluation(
    info: ModelInfo,
    encoder: TextEncoder,
    samples: SampleSet,
    reference: ReferenceModel,
    output_names: Sequence[str],
) -> Evaluation:
    texts = list(samples.validation)
    # Each text alone and in mixed-length padded batches: dynamic quantisation scales
    # activations per batch, so a short text beside long ones is judged too.
    batches = [encoder.encode([text]) for text in texts] + encoder.batches(texts, VALIDATION_BATCH)
    references = [reference.run(batch, output_names) for batch in batches]
    return Evaluation(
        batches=batches,
        reference=references,
        output_names=tuple(output_names),
        calibration_samples=len(samples.calibration),
        validation_samples=len(texts),
        notes=(
            f"validated on {samples.describe()}",
            f"each text run alone and in padded batches of {VALIDATION_BATCH}",
        ),
    )


def convert(request: ConvertRequest, progress: Progress | None = None) -> ConversionResult:
    progress = progress or SilentProgress()
    if request.out is not None:
        check_destination(request.out, force=request.force)
    the_plan = make_plan(request, progress)
    info, profile = the_plan.model, the_plan.profile
    if not the_plan.candidates:
        raise explain_empty_plan(the_plan)
    out = request.out or default_out(info, profile.id)
    check_destination(out, force=request.force)
    progress.stage(f"Plan for {profile.id}: " + ", ".join(c.recipe.id for c in the_plan.candidates))
    samples = load_samples(info.family, request.samples)
    threads = max(1, min(profile.cpu.cores, available_cores()))

    with tempfile.TemporaryDirectory(prefix="edgeport-") as tmp:
        workdir = Path(tmp)
        tokenizer_dir = prepare_tokenizer(
            info, workdir, trust_remote_code=request.trust_remote_code
        )
        progress.stage("Loading the original model (PyTorch) for reference outputs")
        evaluator_export = _export(
            "onnxruntime",
            info,
            workdir / "onnxruntime",
            request.trust_remote_code,
            request.export_cache,
        )
        encoder = TextEncoder(tokenizer_dir, info.max_length, evaluator_export.input_names)
        reference = ReferenceModel(info, trust_remote_code=request.trust_remote_code)
        evaluation = build_evaluation(
            info, encoder, samples, reference, evaluator_export.output_names
        )
        del reference
        calibration = [encoder.encode([text]) for text in samples.calibration]
        bench_feeds = encoder.encode(list(samples.validation[:BENCH_BATCH]))

        evaluator = CandidateEvaluator(
            info,
            evaluation,
            calibration,
            bench_feeds,
            threads,
            workdir,
            request.trust_remote_code,
            progress,
            request.export_cache,
        )
        evaluator._exports["onnxruntime"] = evaluator_export
        progress.stage("Measuring the ONNX Runtime fp32 baseline")
        baseline = evaluator.baseline()

        attempts: list[Attempt] = []
        started = time.monotonic()
        for index, candidate in enumerate(the_plan.candidates, start=1):
            if time.monotonic() - started > request.search_budget_s and any(
                a.status == "passed" for a in attempts
            ):
                attempts.append(
                    Attempt(
                        recipe_id=candidate.recipe.id,
                        target_id=candidate.target.id,
                        device=candidate.device,
                        precision=candidate.recipe.precision,
                        status="skipped",
                        detail=f"search budget of {request.search_budget_s:.0f}s spent",
                    )
                )
                continue
            progress.stage(
                f"[{index}/{len(the_plan.candidates)}] {candidate.recipe.id}: {candidate.reason}"
            )
            attempt = evaluator.evaluate(candidate, baseline)
            attempts.append(attempt)
            progress.info(_attempt_line(attempt))

        chosen = choose(attempts, request.objective)
        verdict = "passed"
        if chosen is None:
            if not any(a.status == "failed" for a in attempts):
                errors = "; ".join(f"{a.recipe_id}: {a.detail}" for a in attempts)
                raise UnsupportedError(f"every candidate failed to convert: {errors}")
            if request.accept_degraded:
                chosen = best_failed(attempts)
                verdict = "degraded"
            else:
                verdict = "failed"
        versions = library_versions()
        report_text = render_report(
            the_plan, attempts, chosen, verdict, versions, samples.describe(), request.objective
        )
        if chosen is None:
            report_path = out.with_name(f"{out.name}.report.md")
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(report_text, encoding="utf-8")
            return ConversionResult(
                bundle=None,
                report=report_path,
                verdict="failed",
                chosen=None,
                attempts=attempts,
                plan=the_plan,
            )

        candidate = next(c for c in the_plan.candidates if c.recipe.id == chosen.recipe_id)
        artifact = evaluator.artifacts[chosen.recipe_id]
        progress.stage(f"Writing bundle to {out}")
        bundle_path = write_bundle(
            out,
            request,
            the_plan,
            candidate,
            artifact,
            chosen,
            attempts,
            verdict,
            tokenizer_dir,
            versions,
            report_text,
            threads,
            evaluation,
            samples.validation,
        )
    return ConversionResult(
        bundle=bundle_path,
        report=bundle_path / REPORT,
        verdict=verdict,
        chosen=chosen,
        attempts=attempts,
        plan=the_plan,
    )


def _export(
    target_id: str, info: ModelInfo, workdir: Path, trust_remote_code: bool, cache: Path | None
) -> ExportedModel:
    if cache is None:
        return get_backend(target_id).export(info, workdir, trust_remote_code=trust_remote_code)
    from edgeport.build import cached_export

    return cached_export(target_id, info, workdir, trust_remote_code=trust_remote_code, cache=cache)


def _attempt_line(attempt: Attempt) -> str:
    parts = [f"{attempt.recipe_id}: {attempt.status}"]
    if attempt.validation:
        parts += [f"{m.name}={m.value:.4f}" for m in attempt.validation.metrics]
    if attempt.latency_ratio is not None:
        parts.append(f"latency {attempt.latency_ratio:.2f}x fp32")
    if attempt.status in {"error", "failed"} and attempt.detail:
        parts.append(f"({attempt.detail})")
    return " ".join(parts)


def _labels(info: ModelInfo) -> dict[str, str]:
    import json

    config = json.loads((info.local_path / "config.json").read_text(encoding="utf-8"))
    labels = config.get("id2label") or {}
    return (
        {str(key): str(value) for key, value in labels.items()}
        if info.task != "feature-extraction"
        else {}
    )


def write_bundle(
    out: Path,
    request: ConvertRequest,
    the_plan: Plan,
    candidate: Candidate,
    artifact: Artifact,
    chosen: Attempt,
    attempts: list[Attempt],
    verdict: str,
    tokenizer_dir: Path,
    versions: dict[str, str],
    report_text: str,
    threads: int,
    evaluation: Evaluation | None = None,
    validation_texts: Sequence[str] = (),
) -> Path:
    from tokenizers import Tokenizer

    from edgeport.archive import reproducibility
    from edgeport.golden import write_golden
    from edgeport.text_inputs import pad_token_id

    info, profile = the_plan.model, the_plan.profile
    template = RUNNER_TEMPLATES.get((candidate.target.id, info.family))
    if template is None:
        raise UnsupportedError(
            f"no on-device runner for {candidate.target.id} {info.family} models yet"
        )
    runtime_devices = profile.runtime(candidate.target.id)
    with BundleWriter(out, force=request.force) as writer:
        for name in artifact.files:
            writer.copy(artifact.directory / name)
        for path in tokenizer_files(tokenizer_dir):
            writer.copy(path)
        writer.write_text(RUNNER, runner_source(template))
        writer.write_text(VERIFIER, runner_source(VERIFIER_TEMPLATE))
        golden = None
        if evaluation is not None:
            golden = write_golden(
                writer.root,
                info,
                evaluation,
                validation_texts,
                candidate.recipe.tolerance,
                artifact.input_names,
                artifact.output_names,
            )
        writer.write_text(REQUIREMENTS, _requirements(candidate, versions))
        writer.write_text(REPORT, report_text)
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        runtime = RuntimeSpec(
            target=candidate.target.id,
            device=candidate.device,
            task=info.task,
            model_file=artifact.model_file,
            input_names=list(artifact.input_names),
            output_names=list(artifact.output_names),
            pooling=info.pooling,
            normalize_embeddings=info.normalize_embeddings,
            max_length=info.max_length,
            threads=profile.cpu.cores,
            precision=candidate.recipe.precision,
            pad_token_id=pad_token_id(tokenizer_dir, tokenizer),
            providers=list(runtime_devices.devices) if runtime_devices else [candidate.device],
            labels=_labels(info),
        )
        metrics = {m.name: m.value for m in chosen.validation.metrics} if chosen.validation else {}
        entries = writer.file_entries()
        if chosen.latency_ratio is not None:
            metrics["latency_ratio_vs_fp32"] = chosen.latency_ratio
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
            notes=list(chosen.validation.notes) if chosen.validation else [],
            golden=golden,
            reproducibility=reproducibility(entries),
        )
        writer.write_manifest(manifest)
        return writer.commit()


def _requirements(candidate: Candidate, versions: dict[str, str]) -> str:
    lines = [
        "# What run.py needs on the device; the runtime version is the one edgeport validated with."
    ]
    for package in candidate.target.device_packages:
        version = versions.get(package)
        if package == candidate.target.device_packages[0] and version:
            lines.append(f"{package}=={version}")
        else:
            lines.append(package)
    return "\n".join(lines) + "\n"
