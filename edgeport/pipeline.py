"""The only place that orders the stages: resolve, inspect, plan, evaluate candidates, bundle.

Candidates are evaluated in plan order (evaluation.py: export once per target, then
optimise, quantise, validate against PyTorch and measure on this host, against the
catalogue's baseline recipe), every result is kept, and the winner for the objective is
chosen among those that pass their recipe's tolerance (selection.py). A candidate that
misses it is never shipped unless the user accepts degradation explicitly. The bundle's
content is assembly.py's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeport.assembly import library_versions, render_outcome, write_bundle, write_failed_report
from edgeport.backends import host_targets
from edgeport.bundle import REPORT, check_destination
from edgeport.catalog import Catalog, load_catalog
from edgeport.errors import DoesNotFitError, EdgeportError, UnsupportedError
from edgeport.evaluation import CandidateEvaluator, search_candidates
from edgeport.exports import export_model
from edgeport.families import family_of
from edgeport.host import available_cores, probe_cpu
from edgeport.hub import (
    check_metadata_safety,
    fetch_planning_files,
    read_config,
    resolve,
    resolve_metadata,
)
from edgeport.model_info import inspect_model
from edgeport.model_shape import model_shape
from edgeport.planner import Objective, does_not_fit, footprint, plan
from edgeport.progress import Progress, SilentProgress
from edgeport.schemas import ConversionResult, ModelInfo, Plan
from edgeport.selection import attempt_key, speed_basis
from edgeport.validate import ReferenceModel


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    profile: str
    out: Path | None = None
    revision: str | None = None
    task: str | None = None
    samples: Path | None = None
    recipes: frozenset[str] | None = None
    # None: the model family's default: latency for encoders, size for LMs.
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
    # A hard limit on the shipped model files, in MiB (--max-size); None: the device's memory.
    max_size_mb: float | None = None


def default_out(model: ModelInfo, profile_id: str) -> Path:
    name = model.display_name.rstrip("/").split("/")[-1]
    return Path("bundles") / f"{name}-{profile_id}"


def _catalog(request: ConvertRequest) -> Catalog:
    return request.catalog or load_catalog(request.profiles_dirs, request.recipes_dirs)


def make_plan(request: ConvertRequest, progress: Progress) -> Plan:
    """The plan, from the model's metadata only: config files and safetensors headers,
    never its weights (`fetch_weights` downloads those once something fits).

    The order of the checks: the fit check first, since it runs no code and downloads
    nothing, so a model too large at every precision the device's runtimes offer is exit
    5 with its numbers even when it would also need remote code or is of a type edgeport
    cannot export (exit 4): no flag or upgrade would make it fit. A model that may fit
    then meets the safety rules (remote code, pickle weights) and the model-type checks.
    """
    catalog = _catalog(request)
    profile = catalog.profile(request.profile)
    calibration = catalog.calibration(profile.id)  # a malformed one fails before any work
    if request.recipes:
        for name in request.recipes:
            catalog.recipe(name)  # unknown names are bad input, not an empty plan
    progress.stage(f"Resolving {request.model}")
    metadata = resolve_metadata(request.model, request.revision)
    resolved = metadata.resolved
    config = read_config(resolved.local_path)
    shape = model_shape(config, metadata.headers)
    name = resolved.repo_id or request.model
    found = footprint(name, shape, profile, catalog.recipes.values(), catalog.targets)
    numbers = {**found.model_dump(), "profile": profile.id}
    problem = does_not_fit(found, profile)
    if problem is not None:
        raise DoesNotFitError(problem, details=numbers)
    try:
        check_metadata_safety(
            metadata,
            config,
            trust_remote_code=request.trust_remote_code,
            allow_pickle=request.allow_pickle,
        )
        if metadata.has_safetensors:
            fetch_planning_files(metadata)
            info = inspect_model(resolved, request.task, files=metadata.files, shape=shape)
        else:  # pickle weights (--allow-pickle) have no header: their file sizes tell
            resolved = resolve(
                request.model,
                request.revision,
                trust_remote_code=request.trust_remote_code,
                allow_pickle=request.allow_pickle,
            )
            info = inspect_model(resolved, request.task)
    except EdgeportError as exc:  # refused after the fit check: the numbers still answer
        exc.details = {**numbers, **exc.details}
        raise
    result = plan(
        info,
        profile,
        catalog.recipes.values(),
        catalog.targets,
        host_targets(catalog.targets.values()),
        objective=objective_for(request, info),
        only_recipes=request.recipes,
        calibration=calibration,
        max_size_mb=request.max_size_mb,
    )
    return result.model_copy(update={"footprint": found})


def fetch_weights(the_plan: Plan, request: ConvertRequest, progress: Progress) -> Plan:
    """The plan's model with its weights on disk: the whole snapshot of the commit the plan
    read (a local folder already has them)."""
    info = the_plan.model
    if info.repo_id is None:
        return the_plan
    progress.stage(f"Downloading {info.repo_id}")
    resolved = resolve(
        info.repo_id,
        info.commit or request.revision,
        trust_remote_code=request.trust_remote_code,
        allow_pickle=request.allow_pickle,
    )
    files = sorted(
        path.relative_to(resolved.local_path).as_posix()
        for path in resolved.local_path.rglob("*")
        if path.is_file()
    )
    model = info.model_copy(update={"local_path": resolved.local_path, "files": files})
    return the_plan.model_copy(update={"model": model})


def objective_for(request: ConvertRequest, info: ModelInfo) -> Objective:
    return request.objective or family_of(info).default_objective


def explain_empty_plan(result: Plan) -> EdgeportError:
    """Why nothing can be converted: does not fit (exit 5) or unsupported (exit 4).

    The planner checks memory only for recipes the device and model could otherwise run
    (runtime, family, ISA and precision pass first), so a memory drop means "possible but
    too big". Recipes dropped for other reasons never make the answer "unsupported" while
    one was possible: the user needs to know it is the device's memory that stops them.
    """
    profile = result.profile
    too_big = [d for d in result.dropped if d.code == "memory"]
    too_large = [d for d in result.dropped if d.code == "size"]
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
    if too_large:
        smallest = min(too_large, key=lambda d: d.estimated_size_mb or float("inf"))
        return DoesNotFitError(
            f"nothing fits {profile.id} within the size limit: {len(too_large)} candidate(s) "
            f"dropped; the smallest possible ({smallest.recipe_id}) has {smallest.reason}"
        )
    reasons = "; ".join(f"{d.recipe_id}: {d.reason}" for d in result.dropped) or "no recipes"
    return UnsupportedError(f"no candidate for {profile.id}: {reasons}")


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
    catalog = _catalog(request)
    request = replace(request, catalog=catalog)  # read once, planned with
    baseline = catalog.target(catalog.baseline.target)
    baseline_words = f"{baseline.name} fp32"  # "ONNX Runtime fp32", for the report and plot
    the_plan = make_plan(request, progress)
    if not the_plan.candidates:
        raise explain_empty_plan(the_plan)
    profile = the_plan.profile
    out = request.out or default_out(the_plan.model, profile.id)
    protected = protected_paths(request, the_plan.model)
    check_destination(out, force=request.force, protected=protected)
    # Only now that something fits are the weights worth downloading.
    the_plan = fetch_weights(the_plan, request, progress)
    info = the_plan.model
    progress.stage(f"Plan for {profile.id}: " + ", ".join(c.recipe.id for c in the_plan.candidates))
    family = family_of(info)
    samples = family.load_samples(request.samples)
    objective = objective_for(request, info)
    threads = max(1, min(profile.cpu.cores, available_cores()))
    basis = speed_basis(profile, probe_cpu(), the_plan.candidates)
    if not basis.host_timings_rank:
        progress.stage(basis.describe(profile.id))

    with tempfile.TemporaryDirectory(prefix="edgeport-") as tmp:
        workdir = Path(tmp)
        processor_dir = family.prepare_processor(
            info, workdir, trust_remote_code=request.trust_remote_code
        )
        progress.stage("Loading the original model (PyTorch) for reference outputs")
        # The baseline's export names the inputs and outputs the reference model is run
        # with; its candidates reuse it.
        baseline_export = export_model(
            baseline,
            info,
            workdir / baseline.id,
            trust_remote_code=request.trust_remote_code,
            cache=request.export_cache,
        )
        reference = ReferenceModel(info, trust_remote_code=request.trust_remote_code)
        prepared = family.prepare(info, processor_dir, samples, baseline_export, reference)
        del reference

        evaluator = CandidateEvaluator(
            info,
            prepared.evaluation,
            prepared.calibration,
            prepared.bench,
            threads,
            workdir,
            request.trust_remote_code,
            progress,
            request.export_cache,
            family,
            exports={baseline.id: baseline_export},
            baseline=baseline,
        )
        outcome = search_candidates(
            the_plan.candidates,
            evaluator,
            progress,
            objective=objective,
            basis=basis,
            budget_s=request.search_budget_s,
            accept_degraded=request.accept_degraded,
            search_inputs=prepared.search,
        )
        chosen, verdict = outcome.chosen, outcome.verdict
        versions = library_versions()
        report_text, tradeoff_svg = render_outcome(
            the_plan,
            outcome.attempts,
            chosen,
            verdict,
            versions,
            samples.describe(),
            objective,
            baseline=baseline_words,
            speed_note=basis.describe(profile.id),
        )
        if chosen is None:
            return ConversionResult(
                bundle=None,
                report=write_failed_report(out, report_text),
                verdict="failed",
                chosen=None,
                attempts=outcome.attempts,
                plan=the_plan,
            )

        # The shipped recipe is the one that ran: with any nodes the search kept in float.
        key = attempt_key(chosen.recipe_id, chosen.variant)
        progress.stage(f"Writing bundle to {out}")
        bundle_path = write_bundle(
            out,
            the_plan,
            evaluator.candidates[key],
            evaluator.artifacts[key],
            chosen,
            outcome.attempts,
            verdict,
            processor_dir=processor_dir,
            versions=versions,
            report_text=report_text,
            evaluation=prepared.evaluation,
            samples=samples,
            tradeoff_svg=tradeoff_svg,
            speed_note="" if basis.host_timings_rank else basis.describe(profile.id),
            force=request.force,
            protected=protected,
        )
    return ConversionResult(
        bundle=bundle_path,
        report=bundle_path / REPORT,
        verdict=verdict,
        chosen=chosen,
        attempts=outcome.attempts,
        plan=the_plan,
    )
