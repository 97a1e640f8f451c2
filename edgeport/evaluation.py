"""Build, validate and measure candidates, one at a time, until the search is done.

`CandidateEvaluator` exports once per target, then builds, validates and measures each
candidate on this host, against the catalogue's baseline (its recipe's target running
its plain fp32 export): the yardstick of every latency ratio. A candidate's failure,
whatever it is, becomes an `error` attempt: one broken backend must not hide the other
candidates' results.

`search_candidates` is the loop over the plan: it stops building once the search budget
is spent (but never before a candidate passed), skips candidates that cannot beat a
passing one (selection.prune_reason), tries mixed precision on a failed one when its
recipe asks, then picks the winner (selection.verdict_for). It only talks to an
`Evaluator`, so the search is testable without a model or a runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeport.backends import Artifact, ExportedModel, Feeds, InferenceSession, get_backend
from edgeport.dependencies import install_hint
from edgeport.errors import DoesNotFitError, EdgeportError
from edgeport.exports import export_model
from edgeport.families import BenchWorkload, Family, family_of
from edgeport.parts import PartSessions, build_parts, load_parts
from edgeport.schemas import Attempt
from edgeport.selection import (
    SpeedBasis,
    Verdict,
    attempt_key,
    contender_keys,
    lead_is_clear,
    prune_reason,
    verdict_for,
)
from edgeport.validate import primary_metric

if TYPE_CHECKING:
    from edgeport.planner import Objective
    from edgeport.progress import Progress
    from edgeport.schemas import Candidate, Measurement, ModelInfo, Target
    from edgeport.validate import Evaluation

log = logging.getLogger("edgeport")
# Back-to-back (baseline, candidate) pairs measured for each passing candidate.
PAIRED_ROUNDS = 3

# How a candidate's latency is measured: (artifact, target, device, threads, workload).
Measure = Callable[[Artifact, "Target", str, int, BenchWorkload], "Measurement"]


def measure_on_host(
    artifact: Artifact, target: Target, device: str, threads: int, bench: BenchWorkload
) -> Measurement:
    """Latency and peak memory in a fresh child process (bench.py)."""
    from edgeport.bench import measure

    return measure(artifact, target, device, threads, bench.feeds, new_tokens=bench.new_tokens)


def skipped(candidate: Candidate, detail: str) -> Attempt:
    """A candidate the search did not build, with the reason."""
    return Attempt(
        recipe_id=candidate.recipe.id,
        target_id=candidate.target.id,
        device=candidate.device,
        precision=candidate.recipe.precision,
        status="skipped",
        detail=detail,
    )


def attempt_line(attempt: Attempt) -> str:
    """One line of progress for an evaluated candidate."""
    parts = [f"{attempt.recipe_id}: {attempt.status}"]
    if attempt.validation:
        parts += [f"{m.name}={m.value:.4f}" for m in attempt.validation.metrics]
    if attempt.latency_ratio is not None:
        parts.append(f"latency {attempt.latency_ratio:.2f}x fp32")
    if attempt.status in {"error", "failed"} and attempt.detail:
        parts.append(f"({attempt.detail})")
    return " ".join(parts)


def _as_artifact(exported: ExportedModel) -> Artifact:
    return Artifact(
        exported.directory,
        exported.model_file,
        (exported.model_file,),
        exported.input_names,
        exported.output_names,
    )


def part_fallbacks(artifact: Artifact) -> list[list[str]]:
    """The parts to keep at full precision, one variant after another, when a multi-part
    artifact misses the gate: each quantised part alone, the smallest first (the
    combination that stays the most compressed is tried first, and the part at fault is
    usually one: Whisper's encoder is sensitive, its decoder is not), then, with more than
    two quantised parts, all but the first. Keeping every quantised part is the fp32
    candidate itself, never a variant."""
    quantised = [part for part in artifact.parts if part.precision not in ("", "fp32")]
    if len(quantised) < 2:
        return []
    alone = [[part.part] for part in sorted(quantised, key=lambda part: part.model_bytes)]
    if len(quantised) > 2:
        alone.append([part.part for part in quantised[1:]])
    return alone


class CandidateEvaluator:
    """Export once per target, then build, validate and measure each candidate.

    `baseline` is the target of the catalogue's baseline recipe (Catalog.baseline): its
    plain fp32 export, on its first device, is what every latency ratio divides by.
    `measure` times an artifact (a child process per measurement unless told otherwise).
    """

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
        family: Family | None = None,
        exports: dict[str, ExportedModel] | None = None,
        *,
        baseline: Target,
        measure: Measure = measure_on_host,
    ) -> None:
        self.export_cache = export_cache
        self.info = info
        self.family = family or family_of(info)
        self.evaluation = evaluation
        self.calibration = calibration
        self.bench = bench
        self.threads = threads
        self.workdir = workdir
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        self.baseline_target = baseline
        self.measure = measure
        self._exports: dict[str, ExportedModel] = dict(exports or {})
        self.artifacts: dict[str, Artifact] = {}
        self.candidates: dict[str, Candidate] = {}

    def refine(
        self,
        candidate: Candidate,
        failed: Attempt,
        baseline: Measurement,
        search: Evaluation | None,
        host_timings_rank: bool = True,
    ) -> list[Attempt]:
        """Variants of a failed candidate: for a multi-part model, one quantised part at a
        time back at full precision (part by part, see `part_fallbacks`), then mixed
        precision by node (search.py) when the recipe asks and the family gave search
        inputs."""
        key = attempt_key(candidate.recipe.id, failed.variant)
        if key not in self.artifacts:
            return []
        attempts: list[Attempt] = []
        first = self.artifacts[key].parts[0].part if self.artifacts[key].parts else ""
        for kept in part_fallbacks(self.artifacts[key]):
            variant_candidate = candidate.model_copy(update={"float_parts": kept})
            variant = f"{', '.join(kept)} in fp32"
            self.progress.info(f"{candidate.recipe.id}: keeping {variant}")
            attempt = self.evaluate(variant_candidate, baseline, variant)
            self.progress.info(attempt_line(attempt))
            attempts.append(attempt)
            if attempt.status in ("passed", "skipped"):
                return attempts  # skipped: pruned, and so would the others be
            if first not in kept and attempt_key(candidate.recipe.id, variant) in self.artifacts:
                # The mixed-precision search below ranks the first part's nodes, the
                # others as this variant keeps them.
                candidate, key = variant_candidate, attempt_key(candidate.recipe.id, variant)
        if search is None or not candidate.recipe.quantize.mixed_precision:
            return attempts
        from edgeport.search import refine

        artifact = self.artifacts[key]
        ranked, others = artifact, {}
        if artifact.parts:
            # A multi-part model: the nodes of the part the recipe quantises for the
            # device's per-input work (the first: CLIP's image tower) are ranked, each
            # variant validated together with the other parts as they are.
            ranked = artifact.parts[0]
            backend = get_backend(candidate.target)
            others = {
                part.part: backend.load(part, candidate.device, self.threads)
                for part in artifact.parts[1:]
            }

        def probe(session: InferenceSession) -> float:
            if others:
                session = PartSessions({ranked.part: session, **others})
            report = self.family.validate(self.info, session, search, candidate.recipe.tolerance)
            return primary_metric(report)

        def evaluate(variant_candidate: Candidate, variant: str) -> Attempt:
            attempt = self.evaluate(variant_candidate, baseline, variant)
            self.progress.info(attempt_line(attempt))
            return attempt

        return attempts + refine(
            candidate,
            ranked,
            get_backend(candidate.target),
            probe,
            self.threads,
            evaluate,
            self.progress.info,
            host_timings_rank,
        )

    def export(self, target: Target) -> ExportedModel:
        if target.id not in self._exports:
            self.progress.info(f"exporting to {target.id} (fp32)")
            self._exports[target.id] = export_model(
                target,
                self.info,
                self.workdir / target.id,
                trust_remote_code=self.trust_remote_code,
                cache=self.export_cache,
            )
        return self._exports[target.id]

    def _measure_baseline(self) -> Measurement:
        target = self.baseline_target
        # The first device a target lists is its CPU device, where the baseline runs.
        artifact = _as_artifact(self.export(target))
        return self.measure(artifact, target, target.devices[0], self.threads, self.bench)

    def baseline(self) -> Measurement:
        """The baseline's plain fp32 export, the yardstick every latency ratio divides by."""
        self.progress.stage(f"Measuring the {self.baseline_target.name} fp32 baseline")
        return self._measure_baseline()

    def confirm_latency(
        self, attempts: list[Attempt], rounds: int = PAIRED_ROUNDS
    ) -> list[Attempt]:
        """Re-measure the contenders for the fastest alternately with the baseline.

        Background load on a shared build host drifts over minutes; a ratio taken from
        back-to-back pairs cancels most of it, where one measurement each does not. Only
        the passing candidates whose first ratio is within the noise of the best one
        (`contenders`) can still win; the others keep their ratio. Rounds stop early once
        the leader's slowest paired ratio beats every other contender's fastest: its lead
        is then larger than all the noise measured so far.
        """
        contenders = set(contender_keys(attempts))
        if len(contenders) < 2:
            return attempts
        ratios: dict[str, list[float]] = {key: [] for key in contenders}
        for _ in range(rounds):
            for key in sorted(contenders):
                candidate = self.candidates[key]
                base = self._measure_baseline()
                own = self.measure(
                    self.artifacts[key],
                    candidate.target,
                    candidate.device,
                    self.threads,
                    self.bench,
                )
                ratios[key].append(own.latency_ms / base.latency_ms)
            if lead_is_clear(ratios):
                break
        confirmed = []
        for attempt in attempts:
            key = attempt_key(attempt.recipe_id, attempt.variant)
            if key in ratios:
                values = sorted(ratios[key])
                attempt = attempt.model_copy(
                    update={"latency_ratio": round(values[len(values) // 2], 4)}
                )
            confirmed.append(attempt)
        return confirmed

    def timed(self, attempt: Attempt, baseline: Measurement) -> Attempt:
        """`attempt` with its latency measured, when validation alone decided it (a failed
        candidate that ships degraded is timed like the others)."""
        key = attempt_key(attempt.recipe_id, attempt.variant)
        if attempt.measurement is not None or key not in self.artifacts:
            return attempt
        candidate = self.candidates[key]
        measurement = self.measure(
            self.artifacts[key], candidate.target, candidate.device, self.threads, self.bench
        )
        ratio = round(measurement.latency_ms / baseline.latency_ms, 4)
        return attempt.model_copy(update={"measurement": measurement, "latency_ratio": ratio})

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
            backend = get_backend(candidate.target)
            exported = self.export(candidate.target)
            self.progress.info(f"{recipe.id}: building")
            build_dir = self.workdir / "candidates" / attempt_key(recipe.id, variant)
            artifact = build_parts(
                backend, exported, candidate, self.info, self.calibration, build_dir
            )
            limit = candidate.max_model_bytes
            if limit is not None and artifact.model_bytes > limit:
                raise DoesNotFitError(
                    f"not shipped: its model files are {artifact.model_bytes / 2**20:.2f} MB, "
                    f"over --max-size {limit / 2**20:g} MB"
                )
            self.progress.info(f"{recipe.id}: validating against PyTorch")
            session = load_parts(backend, artifact, candidate.device, self.threads)
            report = self.family.validate(self.info, session, self.evaluation, recipe.tolerance)
            del session
            measurement = None
            if report.passed:
                # Only a candidate that can ship is timed: a failed one's speed decides
                # nothing, unless it ships degraded (`timed`).
                self.progress.info(f"{recipe.id}: measuring latency")
                measurement = self.measure(
                    artifact, candidate.target, candidate.device, self.threads, self.bench
                )
        except DoesNotFitError as exc:  # over the size limit, or a budget nothing fits
            return Attempt(
                status="skipped",
                detail=str(exc),
                over_size=True,
                duration_s=round(time.monotonic() - started, 2),
                **common,
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
        ratio = measurement.latency_ms / baseline.latency_ms if baseline and measurement else None
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


class Evaluator(Protocol):
    """What the search asks of an evaluator (CandidateEvaluator, or a fake in tests)."""

    def baseline(self) -> Measurement: ...

    def evaluate(
        self, candidate: Candidate, baseline: Measurement | None, variant: str = ""
    ) -> Attempt: ...

    def refine(
        self,
        candidate: Candidate,
        failed: Attempt,
        baseline: Measurement,
        search: Evaluation | None,
        host_timings_rank: bool = True,
    ) -> list[Attempt]: ...

    def confirm_latency(
        self, attempts: list[Attempt], rounds: int = PAIRED_ROUNDS
    ) -> list[Attempt]: ...

    def timed(self, attempt: Attempt, baseline: Measurement) -> Attempt: ...


@dataclass(frozen=True)
class SearchOutcome:
    attempts: list[Attempt]
    # The attempt to ship: the winner when verdict is "passed", the most accurate failed
    # one when "degraded", None when "failed".
    chosen: Attempt | None
    verdict: Verdict


def search_candidates(
    candidates: Sequence[Candidate],
    evaluator: Evaluator,
    progress: Progress,
    *,
    objective: Objective,
    basis: SpeedBasis,
    budget_s: float,
    accept_degraded: bool,
    search_inputs: Evaluation | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchOutcome:
    """Evaluate the plan's candidates in order and choose among them.

    The budget stops the search only once a candidate passed: before that, every candidate
    is still a chance to ship anything. `search_inputs` (the family's calibration inputs
    with reference outputs) let a failed mixed-precision recipe look for nodes to keep in
    float. Raises UnsupportedError when every candidate errored (none even ran).
    """
    baseline = evaluator.baseline()
    attempts: list[Attempt] = []
    started = clock()
    for index, candidate in enumerate(candidates, start=1):
        if clock() - started > budget_s and any(a.status == "passed" for a in attempts):
            attempts.append(skipped(candidate, f"search budget of {budget_s:.0f}s spent"))
            continue
        pruned = prune_reason(candidate, attempts, objective, basis)
        if pruned:
            attempts.append(skipped(candidate, pruned))
            progress.info(f"{candidate.recipe.id}: skipped, {pruned}")
            continue
        progress.stage(f"[{index}/{len(candidates)}] {candidate.recipe.id}: {candidate.reason}")
        progress.candidate(index, len(candidates), candidate.recipe.id)
        attempt = evaluator.evaluate(candidate, baseline)
        attempts.append(attempt)
        progress.info(attempt_line(attempt))
        if attempt.status == "failed":
            attempts.extend(
                evaluator.refine(
                    candidate, attempt, baseline, search_inputs, basis.host_timings_rank
                )
            )
    if objective == "latency" and basis.host_timings_rank:
        progress.stage("Confirming latency of the passing candidates against the baseline")
        attempts = evaluator.confirm_latency(attempts)
    chosen, verdict = verdict_for(attempts, objective, basis, accept_degraded=accept_degraded)
    if chosen is not None and chosen.measurement is None:
        timed = evaluator.timed(chosen, baseline)
        attempts = [timed if attempt is chosen else attempt for attempt in attempts]
        chosen = timed
    return SearchOutcome(attempts, chosen, verdict)
