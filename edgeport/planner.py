"""Choose candidates for a device: a pure function of data, no I/O.

Every recipe × runtime pair the profile could run is either kept, with a reason and an
estimate of its speed, size and memory, or dropped with the reason (runtime missing on
the device, ISA missing, precision not native, does not fit RAM, extra not installed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from edgeport.schemas import (
    INT8_DOT_FEATURES,
    Candidate,
    DeviceProfile,
    DroppedCandidate,
    ModelInfo,
    Plan,
    Recipe,
    Target,
)

Objective = Literal["latency", "size", "accuracy"]
MIB = 1024 * 1024


def estimate_activation_mb(model: ModelInfo, profile: DeviceProfile) -> float:
    """Peak activation memory of one inference at the profile's typical input size."""
    dims = model.dims
    hidden = dims.hidden_size or 768
    heads = dims.num_attention_heads or 12
    if model.family == "decoder":
        layers = dims.num_layers or 12
        kv_heads = dims.num_key_value_heads or heads
        head_dim = dims.head_dim or hidden // heads
        context = min(profile.context_length, dims.max_positions or profile.context_length)
        kv_cache = 2 * layers * kv_heads * head_dim * context * 4
        logits = (dims.vocab_size or 32000) * 4 * 2
        return (kv_cache + logits + context * hidden * 4 * 8) / MIB
    batch = profile.batch_size
    seq = min(profile.sequence_length, model.max_length)
    # Hidden states and the 4x feed-forward expansion, plus one attention score matrix.
    hidden_states = batch * seq * hidden * 4 * 8
    attention = batch * heads * seq * seq * 4 * 2
    return (hidden_states + attention) / MIB


def estimate_memory_mb(
    model: ModelInfo, recipe: Recipe, target: Target, profile: DeviceProfile
) -> float:
    fp32_weights_mb = model.parameter_count * 4 / MIB
    weights = fp32_weights_mb * recipe.expect.size_factor
    return weights + estimate_activation_mb(model, profile) + target.runtime_overhead_mb


def _drop(recipe: Recipe, code: str, reason: str) -> DroppedCandidate:
    return DroppedCandidate.model_validate(
        {"recipe_id": recipe.id, "target_id": recipe.target, "code": code, "reason": reason}
    )


def _speed_reason(recipe: Recipe, features: frozenset[str], speedup: float) -> str:
    precision = recipe.precision
    if precision == "int8":
        fast = sorted(features & INT8_DOT_FEATURES)
        if fast:
            return f"int8 dot-product instructions ({', '.join(fast)}), ~{speedup:.1f}x fp32"
        return f"int8 without a dot-product ISA, ~{speedup:.1f}x fp32"
    if precision == "fp16":
        return f"native fp16 arithmetic, ~{speedup:.1f}x fp32"
    if precision == "int4":
        return f"int4 weights, ~{speedup:.1f}x fp32 (memory-bound decoding)"
    return "fp32: numerically faithful baseline"


def plan(
    model: ModelInfo,
    profile: DeviceProfile,
    recipes: Iterable[Recipe],
    targets: Mapping[str, Target],
    host_targets: frozenset[str],
    objective: Objective = "latency",
    only_recipes: frozenset[str] | None = None,
) -> Plan:
    """Rank every recipe the device can run; `host_targets` are targets this host can export."""
    kept: list[Candidate] = []
    dropped: list[DroppedCandidate] = []
    features = profile.feature_set
    budget_mb = profile.usable_memory_mb

    for recipe in sorted(recipes, key=lambda r: r.id):
        if only_recipes is not None and recipe.id not in only_recipes:
            continue
        runtime = profile.runtime(recipe.target)
        target = targets.get(recipe.target)
        if target is None:
            dropped.append(_drop(recipe, "target", f"unknown target {recipe.target!r}"))
            continue
        if runtime is None:
            runs = ", ".join(r.target for r in profile.runtimes)
            dropped.append(
                _drop(recipe, "runtime", f"{profile.id} does not run {target.name} (runs: {runs})")
            )
            continue
        families = recipe.requires.families or target.families
        if model.family not in families or model.family not in target.families:
            dropped.append(
                _drop(recipe, "family", f"made for {'/'.join(families)} models, not {model.family}")
            )
            continue
        needed = recipe.requires.cpu_features_any
        if needed and not features.intersection(needed):
            dropped.append(
                _drop(
                    recipe,
                    "isa",
                    f"needs one of {', '.join(needed)}; {profile.id} has "
                    f"{', '.join(sorted(features)) or 'no listed features'}",
                )
            )
            continue
        device = runtime.devices[0]
        precision = recipe.precision
        if precision not in target.precisions:
            dropped.append(_drop(recipe, "precision", f"{target.name} does not run {precision}"))
            continue
        if recipe.requires.hardware_precision and precision not in profile.hardware_precisions(
            device
        ):
            dropped.append(
                _drop(
                    recipe,
                    "precision",
                    f"{device} on {profile.id} has no native {precision} "
                    "arithmetic; emulating it would be slower than fp32",
                )
            )
            continue
        memory = estimate_memory_mb(model, recipe, target, profile)
        if memory > budget_mb:
            dropped.append(
                _drop(
                    recipe,
                    "memory",
                    f"needs ~{memory:,.0f} MB but {profile.id} can give a model "
                    f"~{budget_mb:,.0f} MB ({profile.usable_memory_fraction:.0%} of "
                    f"{profile.memory_mb:,} MB)",
                )
            )
            continue
        if target.id not in host_targets:
            dropped.append(
                _drop(
                    recipe,
                    "extra",
                    f"{target.name} is not installed on this host: {target.install_command()}",
                )
            )
            continue
        speedup = recipe.expect.speedup_on(features)
        size_mb = model.parameter_count * 4 / MIB * recipe.expect.size_factor
        reason = (
            f"{_speed_reason(recipe, features, speedup)}; ~{size_mb:,.0f} MB on disk; "
            f"needs ~{memory:,.0f} of {budget_mb:,.0f} MB"
        )
        kept.append(
            Candidate(
                recipe=recipe,
                target=target,
                device=device,
                estimated_memory_mb=round(memory, 1),
                estimated_size_mb=round(size_mb, 1),
                estimated_speedup=speedup,
                reason=reason,
            )
        )

    runtime_rank = {r.target: index for index, r in enumerate(profile.runtimes)}
    kept.sort(key=lambda c: rank_key(c, objective, runtime_rank))
    return Plan(model=model, profile=profile, candidates=kept, dropped=dropped)


def rank_key(
    candidate: Candidate, objective: Objective, runtime_rank: Mapping[str, int]
) -> tuple[float, ...]:
    """Sort key: best expected candidate for the objective first; safer first on ties."""
    safety = float(candidate.recipe.safety)
    preference = float(runtime_rank.get(candidate.target.id, 99))
    if objective == "size":
        return (candidate.estimated_size_mb, safety, preference)
    if objective == "accuracy":
        return (safety, -candidate.estimated_speedup, preference)
    return (-candidate.estimated_speedup, safety, preference)
