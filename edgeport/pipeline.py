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
from edgeport.backends import (
    Artifact,
    ExportedModel,
    Feeds,
    InferenceSession,
    get_backend,
    host_targets,
)
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
from edgeport.dependencies import install_hint
from edgeport.errors import DoesNotFitError, EdgeportError, UnsupportedError
from edgeport.host import available_cores, probe_cpu
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import Objective, plan
from edgeport.report import render_report, tradeoff_axes
from edgeport.samples import load_samples
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
from edgeport.selection import (
    attempt_key,
    best_failed,
    choose,
    prune_reason,
    speed_basis,
)
from edgeport.text_inputs import prepare_tokenizer, tokenizer_files
from edgeport.tradeoff_plot import render_tradeoff_svg
from edgeport.validate import Evaluation, ReferenceModel, primary_metric
from edgeport.workloads import BenchWorkload, Workload, workload_for

log = logging.getLogger("edgeport")
TRADEOFF_IMAGE = "tradeoff.svg"
# Back-to-back (baseline, candidate) pairs measured for each passing candidate.
PAIRED_ROUNDS = 3

BASELINE_KEY = "onnxruntime-fp32-baseline"
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
    # None: the model family's default (workloads.py): latency for encoders, size for LMs.
    objective: Objective | None = None
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
    calibration = catalog.calibration(profile.id)  # a malformed one fails before any work
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
        objective=objective_for(request, info),
        only_recipes=request.recipes,
        calibration=calibration,
    )


def objective_for(request: ConvertRequest, info: ModelInfo) -> Objective:
    return request.objective or workload_for(info).default_objective


def explain_empty_plan(result: Plan) -> EdgeportError:
    """Why nothing can be converted: does not fit (exit 5) or unsupported (exit 4).

    The planner checks memory only for recipes the device and model could otherwise run
    (runtime, family, ISA and precision pass first), so a memory drop means "possible but
    too big". Recipes dropped for other reasons never make the answer "unsupported" while
    one was possible: the user needs to know it is the device's memory that stops them.
    """
    profile = result.profile
    too_big = [d for d in result.dropped if d.code == "memory"]
    not_installed = [d for d in result.dropped if d.code == "extra"]
    if not_installed:
        reasons = "; ".join(f"{d.recipe_id}: {d.reason}" for d in not_installed)
        return UnsupportedError(f"no candidate for {profile.id} on this host: {reasons}")
    if too_big:
        smallest = min(too_big, key=lambda d: d.estimated_memory_mb or float("inf"))
        needed = smallest.estimated_memory_mb or 0.0
        return DoesNotFitError(
            f"nothing fits {profile.id}: the smallest possible candidate ({smallest.recipe_id}) "
            f"needs ~{needed:,.0f} MB; the device can give a model ~{profile.usable_memory_mb:,.0f}"
            f" MB ({profile.usable_memory_fraction:.0%} of {profile.memory_mb:,} MB); "
            f"{len(too_big)} candidate(s) dropped for memory"
        )
    reasons = "; ".join(f"{d.recipe_id}: {d.reason}" for d in result.dropped) or "no recipes"
    return UnsupportedError(f"no candidate for {profile.id}: {reasons}")


class CandidateEvaluator:
    """Export once per target, then build, validate and measure each candidate."""

    def __init__(
        self,
        info: ModelInfo,
        evaluation: Evaluation,
        calibration: Sequence[Feeds],
        bench: BenchWorkload,
        threads: int,
        workdir: Path,
        trust_remote_code: bool,
        progress: Progress,
        export_cache: Path | None = None,
        workload: Workload | None = None,
        exports: dict[str, ExportedModel] | None = None,
    ) -> None:
        self.export_cache = export_cache
        self.info = info
        self.workload = workload or workload_for(info)
        self.evaluation = evaluation
        self.calibration = calibration
        self.bench = bench
        self.threads = threads
        self.workdir = workdir
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self._exports: dict[str, ExportedModel] = dict(exports or {})
        self.artifacts: dict[str, Artifact] = {}
        self.candidates: dict[str, Candidate] = {}

    def refine(
        self,
        candidate: Candidate,
        failed: Attempt,
        baseline: Measurement,
        search: Evaluation,
        host_timings_rank: bool = True,
    ) -> list[Attempt]:
        """Mixed-precision variants of a failed candidate (search.py), when the recipe asks."""
        key = attempt_key(candidate.recipe.id, failed.variant)
        if not candidate.recipe.quantize.mixed_precision or key not in self.artifacts:
            return []
        from edgeport.search import refine

        def probe(session: InferenceSession) -> float:
            report = self.workload.validate(self.info, session, search, candidate.recipe.tolerance)
            return primary_metric(report)

        def evaluate(variant_candidate: Candidate, variant: str) -> Attempt:
            attempt = self.evaluate(variant_candidate, baseline, variant)
            self.progress.info(_attempt_line(attempt))
            return attempt

        return refine(
            candidate,
            self.artifacts[key],
            get_backend(candidate.target.id),
            probe,
            self.threads,
            evaluate,
            self.progress.info,
            host_timings_rank,
        )

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
        return _measure(artifact, "onnxruntime", "CPUExecutionProvider", self.threads, self.bench)

    def confirm_latency(
        self, attempts: list[Attempt], rounds: int = PAIRED_ROUNDS
    ) -> list[Attempt]:
        """Re-measure the passing candidates alternately with the baseline.

        Background load on a shared build host drifts over minutes; a ratio taken from
        back-to-back pairs cancels most of it, where one measurement each does not.
        """
        exported = self.export("onnxruntime")
        baseline = Artifact(
            exported.directory,
            exported.model_file,
            (exported.model_file,),
            exported.input_names,
            exported.output_names,
        )
        confirmed = []
        for attempt in attempts:
            key = attempt_key(attempt.recipe_id, attempt.variant)
            if attempt.status != "passed" or key not in self.artifacts:
                confirmed.append(attempt)
                continue
            ratios = []
            for _ in range(rounds):
                base = _measure(
                    baseline, "onnxruntime", "CPUExecutionProvider", self.threads, self.bench
                )
                own = _measure(
                    self.artifacts[key], attempt.target_id, attempt.device, self.threads, self.bench
                )
                ratios.append(own.latency_ms / base.latency_ms)
            ratios.sort()
            confirmed.append(
                attempt.model_copy(update={"latency_ratio": round(ratios[len(ratios) // 2], 4)})
            )
        return confirmed

    def evaluate(
        self, candidate: Candidate, baseline: Measurement | None, variant: str = ""
    ) -> Attempt:
        started = time.monotonic()
        recipe = candidate.recipe
        common = {
            "recipe_id": recipe.id,
            "target_id": candidate.target.id,
            "device": candidate.device,
            "precision": recipe.precision,
            "variant": variant,
            "excluded_nodes": list(recipe.quantize.exclude_nodes),
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
            report = self.workload.validate(self.info, session, self.evaluation, recipe.tolerance)
            del session
            self.progress.info(f"{recipe.id}: measuring latency")
            measurement = _measure(
                artifact, candidate.target.id, candidate.device, self.threads, self.bench
            )
        except EdgeportError as exc:
            return Attempt(
                status="error", detail=str(exc), duration_s=time.monotonic() - started, **common
            )
        except ModuleNotFoundError as exc:  # a dependency of this recipe's code path
            log.debug("candidate %s misses a module", recipe.id, exc_info=True)
            return Attempt(
                status="error",
                detail=install_hint(exc.name or str(exc)),
                duration_s=time.monotonic() - started,
                **common,
            )
        except Exception as exc:  # a backend bug must not hide the other candidates' results
            log.debug("candidate %s crashed", recipe.id, exc_info=True)
            return Attempt(
                status="error",
                detail=f"{type(exc).__name__}: {exc}",
                duration_s=time.monotonic() - started,
                **common,
            )
        self.artifacts[attempt_key(recipe.id, variant)] = artifact
        self.candidates[attempt_key(recipe.id, variant)] = candidate
        notes = list(artifact.notes)
        ratio = measurement.latency_ms / baseline.latency_ms if baseline else None
        return Attempt(
            status="passed" if report.passed else "failed",
            detail="; ".join([*report.failures, *notes]),
            validation=report,
            measurement=measurement,
            latency_ratio=round(ratio, 4) if ratio is not None else None,
            duration_s=round(time.monotonic() - started, 2),
            artifact_dir=artifact.directory,
            **common,
        )


def _measure(
    artifact: Artifact, target_id: str, device: str, threads: int, bench: BenchWorkload
) -> Measurement:
    from edgeport.bench import measure

    return measure(artifact, target_id, device, threads, bench.feeds, new_tokens=bench.new_tokens)


def _skipped(candidate: Candidate, detail: str) -> Attempt:
    """A candidate the search did not build, with the reason."""
    return Attempt(
        recipe_id=candidate.recipe.id,
        target_id=candidate.target.id,
        device=candidate.device,
        precision=candidate.recipe.precision,
        status="skipped",
        detail=detail,
    )


def protected_paths(request: ConvertRequest, info: ModelInfo | None = None) -> tuple[Path, ...]:
    """Folders a bundle must never replace: the model's own, as given and as resolved."""
    given = Path(request.model).expanduser()
    paths = (given,) if given.exists() else ()
    return (*paths, info.local_path) if info is not None else paths


def convert(request: ConvertRequest, progress: Progress | None = None) -> ConversionResult:
    progress = progress or SilentProgress()
    # The destination is checked before any work (minutes of it), and again once the
    # model's own folder is known: a bundle never replaces its source.
    if request.out is not None:
        check_destination(request.out, force=request.force, protected=protected_paths(request))
    the_plan = make_plan(request, progress)
    info, profile = the_plan.model, the_plan.profile
    if not the_plan.candidates:
        raise explain_empty_plan(the_plan)
    out = request.out or default_out(info, profile.id)
    check_destination(out, force=request.force, protected=protected_paths(request, info))
    progress.stage(f"Plan for {profile.id}: " + ", ".join(c.recipe.id for c in the_plan.candidates))
    samples = load_samples(info.family, request.samples)
    workload = workload_for(info)
    objective = objective_for(request, info)
    threads = max(1, min(profile.cpu.cores, available_cores()))
    basis = speed_basis(profile, probe_cpu(), the_plan.candidates)
    if not basis.host_timings_rank:
        progress.stage(basis.describe(profile.id))

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
        reference = ReferenceModel(info, trust_remote_code=request.trust_remote_code)
        prepared = workload.prepare(info, tokenizer_dir, samples, evaluator_export, reference)
        del reference
        evaluation = prepared.evaluation

        evaluator = CandidateEvaluator(
            info,
            evaluation,
            prepared.calibration,
            prepared.bench,
            threads,
            workdir,
            request.trust_remote_code,
            progress,
            request.export_cache,
            workload,
            exports={"onnxruntime": evaluator_export},
        )
        progress.stage("Measuring the ONNX Runtime fp32 baseline")
        baseline = evaluator.baseline()

        attempts: list[Attempt] = []
        started = time.monotonic()
        for index, candidate in enumerate(the_plan.candidates, start=1):
            if time.monotonic() - started > request.search_budget_s and any(
                a.status == "passed" for a in attempts
            ):
                attempts.append(
                    _skipped(candidate, f"search budget of {request.search_budget_s:.0f}s spent")
                )
                continue
            pruned = prune_reason(candidate, attempts, objective, basis)
            if pruned:
                attempts.append(_skipped(candidate, pruned))
                progress.info(f"{candidate.recipe.id}: skipped, {pruned}")
                continue
            progress.stage(
                f"[{index}/{len(the_plan.candidates)}] {candidate.recipe.id}: {candidate.reason}"
            )
            attempt = evaluator.evaluate(candidate, baseline)
            attempts.append(attempt)
            progress.info(_attempt_line(attempt))
            if attempt.status == "failed" and prepared.search is not None:
                attempts.extend(
                    evaluator.refine(
                        candidate, attempt, baseline, prepared.search, basis.host_timings_rank
                    )
                )

        if objective == "latency" and basis.host_timings_rank:
            progress.stage("Confirming latency of the passing candidates against the baseline")
            attempts = evaluator.confirm_latency(attempts)
        chosen = choose(attempts, objective, basis)
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
        axes = tradeoff_axes(attempts)
        tradeoff_svg = render_tradeoff_svg(attempts, chosen, *axes) if axes else None
        report_text = render_report(
            the_plan,
            attempts,
            chosen,
            verdict,
            versions,
            samples.describe(),
            objective,
            TRADEOFF_IMAGE if tradeoff_svg and chosen is not None else None,
            speed_note=basis.describe(profile.id),
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

        # The shipped recipe is the one that ran: with any nodes the search kept in float.
        candidate = evaluator.candidates[attempt_key(chosen.recipe_id, chosen.variant)]
        artifact = evaluator.artifacts[attempt_key(chosen.recipe_id, chosen.variant)]
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
            tradeoff_svg,
            "" if basis.host_timings_rank else basis.describe(profile.id),
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
    tradeoff_svg: str | None = None,
    speed_note: str = "",
) -> Path:
    from tokenizers import Tokenizer

    from edgeport.reproducibility import with_reproducibility
    from edgeport.text_inputs import pad_token_id

    info, profile = the_plan.model, the_plan.profile
    workload = workload_for(info)
    template = workload.runner_template(candidate.target.id)
    if template is None:
        raise UnsupportedError(
            f"no on-device runner for {candidate.target.id} {info.family} models yet"
        )
    runtime_devices = profile.runtime(candidate.target.id)
    with BundleWriter(
        out, force=request.force, protected=protected_paths(request, info)
    ) as writer:
        for name in artifact.files:
            writer.copy(artifact.directory / name)
        for path in tokenizer_files(tokenizer_dir):
            writer.copy(path)
        writer.write_text(RUNNER, runner_source(template))
        writer.write_text(VERIFIER, runner_source(VERIFIER_TEMPLATE))
        golden = None
        if evaluation is not None:
            golden = workload.write_golden(
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
        if tradeoff_svg:
            writer.write_text(TRADEOFF_IMAGE, tradeoff_svg)
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
            **workload.runtime_extras(info),
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
