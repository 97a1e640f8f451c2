"""Human-readable report.md: what was chosen and why, every attempt, and the numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeport.schemas import Attempt, Plan

_STATUS = {"passed": "pass", "failed": "FAIL", "error": "error", "skipped": "skipped"}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def attempts_table(attempts: list[Attempt], chosen: Attempt | None) -> list[str]:
    metric_names: list[str] = []
    for attempt in attempts:
        for metric in attempt.validation.metrics if attempt.validation else []:
            if metric.name not in metric_names:
                metric_names.append(metric.name)
    header = [
        "candidate",
        "target",
        "precision",
        "verdict",
        "latency ms",
        "vs fp32",
        "size MB",
        "peak MB",
        *metric_names,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for attempt in attempts:
        m = attempt.measurement
        metrics = (
            {x.name: x.value for x in attempt.validation.metrics} if attempt.validation else {}
        )
        name = attempt.recipe_id + (f" ({attempt.variant})" if attempt.variant else "")
        name += " **(chosen)**" if chosen is not None and attempt is chosen else ""
        row = [
            name,
            attempt.target_id,
            attempt.precision,
            _STATUS[attempt.status],
            _fmt(m.latency_ms if m else None, 1),
            _fmt(attempt.latency_ratio, 2),
            _fmt(m.model_bytes / 2**20 if m else None, 1),
            _fmt(m.peak_memory_mb if m else None, 0),
            *[_fmt(metrics.get(name)) for name in metric_names],
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_report(
    plan: Plan,
    attempts: list[Attempt],
    chosen: Attempt | None,
    verdict: str,
    versions: dict[str, str],
    sample_description: str,
    objective: str,
    tradeoff_image: str | None = None,
    speed_note: str = "",
    *,
    baseline: str,
) -> str:
    """The bundle's report.md. `baseline` names the runtime and precision `vs fp32` divides
    by (the catalogue's baseline recipe: "ONNX Runtime fp32")."""
    model = plan.model
    profile = plan.profile
    lines = [
        f"# edgeport report: {model.display_name} for {profile.id}",
        "",
        f"- **Model**: `{model.display_name}`"
        + (f" at commit `{model.commit}`" if model.commit else "")
        + f" ({model.model_type}, {model.task}, {model.parameter_count / 1e6:.1f} M parameters, "
        f"{model.weight_dtype})",
        f"- **Device profile**: `{profile.id}`: {profile.name}; {profile.cpu.arch}, "
        f"{profile.cpu.cores} cores, {profile.memory_mb:,} MB RAM"
        + (f", features {', '.join(profile.cpu.features)}" if profile.cpu.features else ""),
        f"- **Verdict**: {verdict}",
        f"- **Objective**: {objective}",
        *([f"- **Speed ranking**: {speed_note}"] if speed_note else []),
    ]
    if chosen is not None:
        candidate = next((c for c in plan.candidates if c.recipe.id == chosen.recipe_id), None)
        lines.append(f"- **Shipped**: `{chosen.recipe_id}` on {chosen.target_id} ({chosen.device})")
        if candidate is not None:
            lines.append(f"  - planned because: {candidate.reason}")
            lines.append(f"  - recipe: {candidate.recipe.description}")
        if chosen.detail:  # what the build did: padding removed, layers kept in float, ...
            lines.append(f"  - built: {chosen.detail}")
    lines += ["", "## Candidates evaluated", ""]
    lines += attempts_table(attempts, chosen)
    if tradeoff_image:
        lines += ["", f"![accuracy against latency, chosen candidate circled]({tradeoff_image})"]
    lines += [
        "",
        "Latency is the median of timed runs on the build host (not the device) with the "
        "device's thread count, capped at the host's cores; `vs fp32` divides by the plain "
        f"{baseline} export (default session options) measured in the same run; for candidates "
        "that passed it is the median of three back-to-back pairs (baseline, candidate), "
        "which cancels the drift of background load.",
        "",
    ]
    failing = [a for a in attempts if a.status != "passed"]
    if failing:
        lines += ["### Why the others were not shipped", ""]
        for attempt in failing:
            reasons = (
                attempt.validation.failures
                if attempt.validation and attempt.validation.failures
                else [attempt.detail]
            )
            variant = f" ({attempt.variant})" if attempt.variant else ""
            lines.append(
                f"- `{attempt.recipe_id}`{variant} ({attempt.status}): "
                + "; ".join(r for r in reasons if r)
            )
        lines.append("")
    if plan.dropped:
        lines += ["## Dropped at planning time", ""]
        for dropped in plan.dropped:
            lines.append(f"- `{dropped.recipe_id}` ({dropped.target_id}): {dropped.reason}")
        lines.append("")
    lines += ["## Validation", "", f"- Inputs: {sample_description}."]
    if chosen is not None and chosen.validation is not None:
        report = chosen.validation
        for metric in report.metrics:
            threshold = (
                ""
                if metric.threshold is None
                else (f" (needs {'>=' if metric.higher_is_better else '<='} {metric.threshold})")
            )
            lines.append(f"- `{metric.name}` = {metric.value:.5f}{threshold}")
        for output in report.outputs:
            lines.append(
                f"- output `{output.name}` {output.candidate_shape}: max abs error "
                f"{output.max_abs_error:.3g}, mean abs error {output.mean_abs_error:.3g}"
            )
        lines += [f"- {note}" for note in report.notes]
        if chosen.excluded_nodes:
            lines.append(f"- Kept in float for accuracy: {', '.join(chosen.excluded_nodes)}")
    lines += ["", "## Versions", ""]
    lines += [f"- {name} {version}" for name, version in sorted(versions.items())]
    lines += [
        "",
        "## Run it on the device",
        "",
        "```",
        "pip install -r requirements.txt",
        'python run.py "some text"',
        "```",
        "",
    ]
    return "\n".join(lines)


def tradeoff_axes(attempts: list[Attempt]) -> tuple[str, float | None] | None:
    """The task metric to plot against latency, and its threshold."""
    for attempt in attempts:
        if attempt.validation and attempt.validation.metrics:
            first = attempt.validation.metrics[0]
            return first.name, first.threshold
    return None
