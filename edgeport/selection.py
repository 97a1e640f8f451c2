"""Choosing among evaluated candidates: pure policy, no I/O.

Which candidate can still win (pruning), which one wins for the objective, and what
ranks speed. Speed is ranked by latency measured on this host only when the host is like
the device: a build host without the device's ISA features (no VNNI, say, when the device
has it) or of another architecture times int8 and fp16 kernels the device will not run,
so the recipes' estimates for the device rank instead, and host timings stay in the
report, labelled as the host's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeport.errors import DoesNotFitError, UnsupportedError
from edgeport.planner import Objective
from edgeport.schemas import Attempt, Candidate, CpuSpec, DeviceProfile
from edgeport.validate import primary_metric

# A planning estimate must be this much worse than a measured, passing candidate before
# it is skipped: estimates are rough, measurements are not.
PRUNE_MARGIN = 1.5
# Objective "size": candidates at most this much larger than the smallest passing one
# count as equally small, and the fastest of them wins.
SIZE_BAND = 1.05
# Latency: passing candidates whose first ratio is within this factor of the best one are
# contenders, re-measured in paired rounds; the rest are slower than any noise we see.
CONTENDER_BAND = 1.15
# Latency, ranked by this host's timings: confirmed ratios within this factor of the best
# one are a tie (a loaded host moved MiniLM's two best by 4 %, and flipped the winner of a
# build between runs). A tie goes to the candidate the plan ranks first, i.e. the one the
# device's estimates make fastest, so the same build ships the same bundle under load.
LATENCY_TIE_BAND = 1.05

# passed: the winner passed its tolerance; degraded: none did and the user accepted the
# most accurate one anyway; failed: none did, nothing ships.
Verdict = Literal["passed", "degraded", "failed"]


def attempt_key(recipe_id: str, variant: str) -> str:
    return f"{recipe_id}|{variant}"


@dataclass(frozen=True)
class SpeedBasis:
    """What ranks candidates for speed on the device.

    `host_gap` is empty when host timings rank (the host has every ISA feature the profile
    lists, on the same architecture); otherwise it says, in one line, why they cannot, and
    `estimated_ratio` (recipe id -> estimated latency relative to fp32 on the device) ranks.
    """

    host_gap: str = ""
    estimated_ratio: Mapping[str, float] = field(default_factory=dict)
    # Of the ranked candidates, how many have a speedup measured on the device (its
    # calibration) rather than estimated by their recipe.
    measured: int = 0

    @property
    def host_timings_rank(self) -> bool:
        return not self.host_gap

    def describe(self, profile_id: str) -> str:
        if self.host_timings_rank:
            return (
                f"latency measured on this host ranks the candidates: it has every ISA "
                f"feature {profile_id} lists"
            )
        if self.measured:
            ranked_by = (
                f"speedups measured on {profile_id} (its calibration: {self.measured} of "
                f"{len(self.estimated_ratio)} candidates) and the recipes' estimates for the rest"
                if self.measured < len(self.estimated_ratio)
                else f"speedups measured on {profile_id} (its calibration)"
            )
        else:
            ranked_by = f"the recipes' speed estimates for {profile_id}"
        return (
            f"{self.host_gap}; candidates are ranked by {ranked_by}, and the latencies shown "
            "were measured on this host"
        )


def host_gap(profile: DeviceProfile, host: CpuSpec) -> str:
    """Why this host's timings do not stand for the device's, or "" when they do."""
    if profile.cpu.arch != host.arch:
        return (
            f"this host is {host.arch} and {profile.id} is {profile.cpu.arch}: "
            "timings here say nothing about the device"
        )
    missing = sorted(profile.feature_set - frozenset(host.features))
    if missing:
        return (
            f"this host has no {', '.join(missing)}: timings here understate what "
            f"{profile.id} gains from {'it' if len(missing) == 1 else 'them'}"
        )
    return ""


def speed_basis(
    profile: DeviceProfile, host: CpuSpec, candidates: Sequence[Candidate]
) -> SpeedBasis:
    gap = host_gap(profile, host)
    if not gap:
        return SpeedBasis()
    return SpeedBasis(
        gap,
        {c.recipe.id: round(1.0 / c.estimated_speedup, 4) for c in candidates},
        measured=len({c.recipe.id for c in candidates if c.speed_source == "measured"}),
    )


def _speed(attempt: Attempt, basis: SpeedBasis) -> tuple[float, float]:
    """Sort key for speed: (device estimate or host ratio, host ratio as tie-break)."""
    if attempt.latency_ratio is not None:
        measured = attempt.latency_ratio
    else:
        measured = attempt.measurement.latency_ms if attempt.measurement else float("inf")
    if basis.host_timings_rank:
        return (measured, measured)
    return (basis.estimated_ratio.get(attempt.recipe_id, float("inf")), measured)


def _size(attempt: Attempt) -> float:
    return attempt.measurement.model_bytes if attempt.measurement else float("inf")


def _accuracy(attempt: Attempt) -> float:
    return primary_metric(attempt.validation) if attempt.validation else float("-inf")


def prune_reason(
    candidate: Candidate,
    attempts: Sequence[Attempt],
    objective: Objective,
    basis: SpeedBasis | None = None,
) -> str:
    """Why evaluating `candidate` cannot change the winner, or "" to evaluate it."""
    basis = basis or SpeedBasis()
    passed = [a for a in attempts if a.status == "passed" and a.measurement]
    if not passed or objective == "accuracy":
        return ""
    if objective == "latency":
        estimate = 1.0 / candidate.estimated_speedup
        if not basis.host_timings_rank:
            best = min(_speed(a, basis)[0] for a in passed)
            if estimate > best:
                return (
                    f"estimated at ~{estimate:.2f}x fp32 latency on the device, cannot beat "
                    f"a passing candidate estimated at {best:.2f}x"
                )
            return ""
        ratios = [a.latency_ratio for a in passed if a.latency_ratio is not None]
        if ratios and estimate > min(ratios) * PRUNE_MARGIN:
            return (
                f"estimated at ~{estimate:.2f}x fp32 latency, cannot beat a passing candidate "
                f"measured at {min(ratios):.2f}x"
            )
        return ""
    sizes = [a.measurement.model_bytes / 2**20 for a in passed if a.measurement]
    if candidate.estimated_size_mb > min(sizes) * PRUNE_MARGIN:
        return (
            f"estimated at ~{candidate.estimated_size_mb:.0f} MB, cannot beat a passing "
            f"candidate of {min(sizes):.0f} MB"
        )
    return ""


def choose(
    attempts: Sequence[Attempt], objective: Objective, basis: SpeedBasis | None = None
) -> Attempt | None:
    """The winner among candidates that passed: by size, accuracy, or speed on the device."""
    basis = basis or SpeedBasis()
    passed = [a for a in attempts if a.status == "passed" and a.measurement and a.validation]
    if not passed:
        return None
    if objective == "size":
        # Sizes within a few percent are the same size to a device's memory; among them
        # speed decides (decode speed, for language models), not a few kilobytes.
        smallest = min(_size(a) for a in passed)
        near = [a for a in passed if _size(a) <= smallest * SIZE_BAND]
        return min(near, key=lambda a: (_speed(a, basis), _size(a)))
    if objective == "accuracy":
        return max(passed, key=lambda a: (_accuracy(a), tuple(-x for x in _speed(a, basis))))
    fastest = min(passed, key=lambda a: _speed(a, basis))
    if not basis.host_timings_rank:
        return fastest
    # `attempts` come in plan order (a variant right after its recipe): the first of the
    # tied ones is the plan's pick.
    limit = _speed(fastest, basis)[0] * LATENCY_TIE_BAND
    return next(a for a in passed if _speed(a, basis)[0] <= limit)


def best_failed(attempts: Sequence[Attempt]) -> Attempt | None:
    validated = [a for a in attempts if a.status == "failed" and a.validation]
    return max(validated, key=_accuracy) if validated else None


def contender_keys(attempts: Sequence[Attempt], band: float = CONTENDER_BAND) -> list[str]:
    """The passing attempts that can still be the fastest: a first ratio within `band` of
    the best one, or within the best one's own spread (p90 over median of its runs),
    whichever is wider. The others are slower by more than one measurement's noise."""
    timed = [
        (a.latency_ratio, a.measurement.latency_p90_ms / max(a.measurement.latency_ms, 1e-9), a)
        for a in attempts
        if a.status == "passed" and a.latency_ratio and a.measurement
    ]
    if not timed:
        return []
    best_ratio, best_spread, _ = min(timed, key=lambda item: item[0])
    limit = best_ratio * max(band, best_spread)
    return [attempt_key(a.recipe_id, a.variant) for ratio, _, a in timed if ratio <= limit]


def lead_is_clear(ratios: Mapping[str, Sequence[float]]) -> bool:
    """Whether paired ratios already say who is fastest: the leader's slowest round is
    faster than every other contender's fastest."""
    measured = {key: values for key, values in ratios.items() if values}
    if len(measured) < 2:
        return True
    leader = min(measured, key=lambda key: sorted(measured[key])[len(measured[key]) // 2])
    return all(
        max(measured[leader]) < min(values) for key, values in measured.items() if key != leader
    )


def verdict_for(
    attempts: Sequence[Attempt],
    objective: Objective,
    basis: SpeedBasis | None = None,
    *,
    accept_degraded: bool,
) -> tuple[Attempt | None, Verdict]:
    """What ships, and why: the winner among passing candidates; else, only when the user
    accepts degradation, the most accurate failed one; else nothing.

    Raises UnsupportedError when no candidate even ran to validation (each one's error is
    in the message): that is not an accuracy verdict but a model edgeport cannot convert;
    DoesNotFitError when the ones that built were all over the size limit (--max-size).
    """
    chosen = choose(attempts, objective, basis)
    if chosen is not None:
        return chosen, "passed"
    too_big = [a for a in attempts if a.over_size]
    if too_big and not any(a.status == "failed" for a in attempts):
        reasons = "; ".join(f"{a.recipe_id}: {a.detail}" for a in too_big)
        raise DoesNotFitError(f"does not fit the device: {reasons}")
    if not any(a.status == "failed" for a in attempts):
        errors = "; ".join(f"{a.recipe_id}: {a.detail}" for a in attempts)
        raise UnsupportedError(f"every candidate failed to convert: {errors}")
    degraded = best_failed(attempts) if accept_degraded else None
    return (degraded, "degraded") if degraded is not None else (None, "failed")
