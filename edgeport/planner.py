"""Choose candidates for a device: a pure function of data, no I/O.

Every recipe × runtime pair the profile could run is either kept, with a reason and an
estimate of its speed, size and memory, or dropped with the reason (runtime missing on
the device, ISA missing, precision not native, does not fit RAM, extra not installed).

A kept candidate carries its recipe resolved for the device: knobs that depend on the
CPU (`quantize.accuracy_level_by_feature`, `group_size_by_feature`) are decided here from
the profile's features, never from the build host, and the manifest records the result.
Language models decode one token at a time and read every weight once per token, so their
speed is estimated from bytes per token and the profile's memory bandwidth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from edgeport.families import families as known_families
from edgeport.families import family_of
from edgeport.model_shape import (
    ModelShape,
    bytes_words,
    count_words,
    kv_cache_elements,
    kv_elements_per_token,
)
from edgeport.schemas import (
    INT8_DOT_FEATURES,
    Calibration,
    Candidate,
    DeviceProfile,
    DroppedCandidate,
    Footprint,
    ModelInfo,
    Plan,
    Recipe,
    SpeedSource,
    Target,
    device_is_accelerator,
)

Objective = Literal["latency", "size", "accuracy"]
MIB = 1024 * 1024
# Share of peak DRAM bandwidth a CPU decoder sustains on one token's weight reads. Good
# GEMV kernels reach 0.6-0.8 of STREAM, which is itself ~0.7 of the peak a spec sheet gives;
# per-operator overhead in small models lowers it further, so estimates are optimistic.
DECODE_BANDWIDTH_EFFICIENCY = 0.5


def estimate_activation_mb(model: ModelInfo, profile: DeviceProfile, target: Target) -> float:
    """Peak activation memory of one inference at the profile's typical input size, on
    the target (its KV cache's element size)."""
    return family_of(model).estimate_activation_mb(model, profile, target.kv_cache_bytes)


def for_device(recipe: Recipe, profile: DeviceProfile) -> Recipe:
    """The recipe with its device-dependent quantisation knobs resolved for the profile."""
    quantize = recipe.quantize.for_features(profile.feature_set)
    if quantize is recipe.quantize:
        return recipe
    return recipe.model_copy(update={"quantize": quantize})


def kv_cache_bytes_per_token(model: ModelInfo, context: int) -> float:
    """Bytes of fp32 KV cache one decode step reads with `context` tokens before it."""
    return kv_cache_elements(model.dims, context) * 4


def decode_bytes_per_token(model: ModelInfo, recipe: Recipe, context: int = 0) -> float:
    """Bytes one decode step reads: every weight it uses once (at the recipe's size: a
    mixture of experts reads only the experts a token is routed to) plus the cache."""
    weights = model.active_parameter_count * 4 * recipe.expect.size_factor
    return weights + kv_cache_bytes_per_token(model, context)


def estimate_decode_tokens_per_s(
    model: ModelInfo, recipe: Recipe, profile: DeviceProfile, context: int = 0
) -> float | None:
    """Memory-bound decode speed on the device, or None without the profile's bandwidth."""
    if not family_of(model).decodes or profile.memory_bandwidth_gbs is None:
        return None
    bandwidth = profile.memory_bandwidth_gbs * 1e9 * DECODE_BANDWIDTH_EFFICIENCY
    return bandwidth / decode_bytes_per_token(model, recipe, context)


def decode_speedup(model: ModelInfo, recipe: Recipe, profile: DeviceProfile) -> float:
    """Expected decode speedup over fp32 weights: the ratio of bytes read per token, with the
    (fp32, unchanged) KV cache at half the profile's context as the common term."""
    context = min(profile.context_length, model.dims.max_positions or profile.context_length)
    fp32 = model.active_parameter_count * 4 + kv_cache_bytes_per_token(model, context // 2)
    return fp32 / decode_bytes_per_token(model, recipe, context // 2)


def _decode_reason(model: ModelInfo, recipe: Recipe, profile: DeviceProfile) -> str:
    megabytes = decode_bytes_per_token(model, recipe) / 1e6
    short = estimate_decode_tokens_per_s(model, recipe, profile)
    if short is None:
        return f"~{megabytes:,.0f} MB read per token (no memory bandwidth in the profile)"
    context = min(profile.context_length, model.dims.max_positions or profile.context_length)
    full = estimate_decode_tokens_per_s(model, recipe, profile, context) or short
    return (
        f"decode ~{short:,.0f} tokens/s (~{full:,.0f} at {context:,} tokens of context): "
        f"~{megabytes:,.0f} MB per token at {DECODE_BANDWIDTH_EFFICIENCY:.0%} of "
        f"{profile.memory_bandwidth_gbs:g} GB/s"
    )


def estimate_memory_mb(
    model: ModelInfo, recipe: Recipe, target: Target, profile: DeviceProfile
) -> float:
    fp32_weights_mb = model.parameter_count * 4 / MIB
    weights = fp32_weights_mb * recipe.expect.size_factor
    if family_of(model).decodes:
        weights *= target.decoder_weight_copies
    return weights + estimate_activation_mb(model, profile, target) + target.runtime_overhead_mb


def weights_budget_mb(model: ModelInfo, target: Target, profile: DeviceProfile) -> float:
    """What the device's memory leaves the model's weights: its usable memory minus the
    activations (a language model's KV cache at the profile's context) and the runtime."""
    activations = estimate_activation_mb(model, profile, target)
    return profile.usable_memory_mb - activations - target.runtime_overhead_mb


def _drop(
    recipe: Recipe,
    code: str,
    reason: str,
    estimated_memory_mb: float | None = None,
    estimated_size_mb: float | None = None,
) -> DroppedCandidate:
    return DroppedCandidate.model_validate(
        {
            "recipe_id": recipe.id,
            "target_id": recipe.target,
            "code": code,
            "reason": reason,
            "estimated_memory_mb": estimated_memory_mb,
            "estimated_size_mb": estimated_size_mb,
        }
    )


def _speed_reason(recipe: Recipe, features: frozenset[str], speedup: float) -> str:
    precision = recipe.precision
    level = recipe.quantize.accuracy_level
    if precision in {"int4", "int8"} and recipe.quantize.scheme.endswith("-weight") and level:
        matched = [f for f, v in recipe.quantize.accuracy_level_by_feature.items() if f in features]
        why = f" for {matched[0]}" if matched else ""
        compute = {4: "int8", 3: "bf16", 2: "fp16", 1: "fp32"}[level]
        return (
            f"{precision} weights, {compute} compute (accuracy_level {level}{why}), "
            f"~{speedup:.1f}x fp32 (memory-bound decoding)"
        )
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


def measured_speedup(
    model: ModelInfo,
    recipe: Recipe,
    profile: DeviceProfile,
    device: str,
    calibration: Calibration | None,
) -> tuple[float, str] | None:
    """The speedup over ONNX Runtime fp32 measured on the device (its calibration), with the
    reason, or None where nothing measured applies (no entry, or an accelerator: the
    reference graphs run on the CPU).

    Encoders: the batch-shape measurement of the recipe's runtime and scheme, times the
    recipe's `graph_speedup` (rewrites the reference graphs do not have). Language models:
    the one-token measurement stands for the weights' share of a decoding step, whose
    fp32 KV cache (at half the profile's context) is read as fast as in fp32.
    """
    if calibration is None or device_is_accelerator(device):
        return None
    decoder = family_of(model).decodes
    found = calibration.measured(recipe, decode=decoder)
    if found is None:
        return None
    key, measured = found
    what = f"{recipe.target} {key}" + (", one token" if decoder else "")
    why = f"measured {measured:.2f}x ONNX Runtime fp32 ({what}) on {calibration.label}"
    if decoder:
        context = min(profile.context_length, model.dims.max_positions or profile.context_length)
        weights = model.active_parameter_count * 4.0
        cache = kv_cache_bytes_per_token(model, context // 2)
        speedup = (weights + cache) / (weights / measured + cache)
        return round(speedup, 2), f"{why}: ~{speedup:.2f}x with the fp32 KV cache"
    graph = recipe.expect.graph_speedup
    if graph == 1.0:
        return round(measured, 2), why
    passes = [
        name
        for name, used in (
            ("fusion", recipe.graph.transformer_fusion),
            ("padding removal", recipe.graph.remove_padding),
        )
        if used
    ]
    rewrites = " and ".join(passes) or "graph rewrites"
    return round(measured * graph, 2), f"{why} x {graph:g} estimated for {rewrites}"


def plan(
    model: ModelInfo,
    profile: DeviceProfile,
    recipes: Iterable[Recipe],
    targets: Mapping[str, Target],
    host_targets: frozenset[str],
    objective: Objective = "latency",
    only_recipes: frozenset[str] | None = None,
    calibration: Calibration | None = None,
    max_size_mb: float | None = None,
) -> Plan:
    """Rank every recipe the device can run; `host_targets` are targets this host can export.

    `calibration` (the profile's measured speedups, or None) replaces the recipes' speed
    estimates wherever it measured the candidate's runtime and precision. `max_size_mb`
    (MiB, --max-size) drops candidates whose model files are estimated larger, and is the
    limit every kept candidate's artifact is held to once built.
    """
    kept: list[Candidate] = []
    dropped: list[DroppedCandidate] = []
    features = profile.feature_set
    budget_mb = profile.usable_memory_mb

    # A multi-part model takes the recipes of its own family and those written for the
    # kinds of its parts a device runs per input (vision recipes for CLIP's image tower,
    # not text-encoder ones for its label prompts; Whisper's encoder and decoder both);
    # edgeport.parts keeps the parts a recipe was not written for at full precision.
    family = known_families().get(model.family)  # unknown: every recipe drops below
    per_input = [p for p in family.export_parts(model) if p.per_input] if family else []
    fitting_kinds = {model.family, *(part.kind for part in per_input)}
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
        if not fitting_kinds.intersection(families) or model.family not in target.families:
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
        scheme = recipe.quantize.scheme
        if scheme not in target.schemes:
            dropped.append(
                _drop(
                    recipe,
                    "scheme",
                    f"{target.name} cannot build {scheme} models "
                    f"(its schemes: {', '.join(target.schemes)})",
                )
            )
            continue
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
                    estimated_memory_mb=round(memory, 1),
                )
            )
            continue
        size_mb = model.parameter_count * 4 / MIB * recipe.expect.size_factor
        if max_size_mb is not None and size_mb > max_size_mb:
            dropped.append(
                _drop(
                    recipe,
                    "size",
                    f"~{size_mb:,.1f} MB of model files, over --max-size {max_size_mb:g} MB",
                    estimated_size_mb=round(size_mb, 1),
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
        recipe = for_device(recipe, profile)
        limit = int(max_size_mb * MIB) if max_size_mb is not None else None
        share = int(max(0.0, weights_budget_mb(model, target, profile)) * MIB)
        if recipe.expect.size_factor_max is not None:  # grows to its budget
            largest = model.parameter_count * 4 / MIB * recipe.expect.size_factor_max
            size_mb = max(size_mb, min(largest, (limit if limit is not None else share) / MIB))
        if family_of(model).decodes:
            speedup = round(decode_speedup(model, recipe, profile), 2)
            decode = _decode_reason(model, recipe, profile)
            speed = f"{_speed_reason(recipe, features, speedup)}; {decode}"
        else:
            speedup = recipe.expect.speedup_on(features)
            speed = _speed_reason(recipe, features, speedup)
        source: SpeedSource = "estimated"
        measured = measured_speedup(model, recipe, profile, device, calibration)
        if measured is not None:
            speedup, source = measured[0], "measured"
            speed = f"{measured[1]} (instead of the recipe's estimate: {speed})"
        on_disk = f"{size_mb:,.0f} MB" if size_mb >= 10 else f"{size_mb:.1f} MB"
        reason = f"{speed}; ~{on_disk} on disk; needs ~{memory:,.0f} of {budget_mb:,.0f} MB"
        kept.append(
            Candidate(
                recipe=recipe,
                target=target,
                device=device,
                estimated_memory_mb=round(memory, 1),
                estimated_size_mb=round(size_mb, 1),
                estimated_speedup=speedup,
                reason=reason,
                speed_source=source,
                max_model_bytes=limit,
                size_budget_bytes=limit if limit is not None else share,
            )
        )

    runtime_rank = {r.target: index for index, r in enumerate(profile.runtimes)}
    kept.sort(key=lambda c: rank_key(c, objective, runtime_rank))
    return Plan(model=model, profile=profile, candidates=kept, dropped=dropped)


def model_context(max_positions: int | None, profile: DeviceProfile) -> int:
    """The tokens of context a language model must hold on the device: the profile's,
    unless the model cannot take that many."""
    return min(profile.context_length, max_positions or profile.context_length)


def _device_recipes(
    recipes: Iterable[Recipe], targets: Mapping[str, Target], profile: DeviceProfile
) -> list[Recipe]:
    """The recipes whose runtime the device runs (all of them when it runs none)."""
    runs = {runtime.target for runtime in profile.runtimes}
    usable = [r for r in recipes if r.target in runs and r.target in targets]
    return usable or list(recipes)


def bytes_per_parameter(
    recipes: Iterable[Recipe], targets: Mapping[str, Target], profile: DeviceProfile
) -> dict[str, float]:
    """Bytes per parameter at each precision the catalogue offers the device, largest
    first: the smallest recipe of each precision (its size_factor counts the scales of
    its quantisation groups and what it keeps at higher precision)."""
    sizes: dict[str, float] = {}
    for recipe in _device_recipes(recipes, targets, profile):
        size = 4.0 * recipe.expect.size_factor
        sizes[recipe.precision] = min(sizes.get(recipe.precision, size), size)
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def footprint(
    name: str,
    shape: ModelShape,
    profile: DeviceProfile,
    recipes: Iterable[Recipe],
    targets: Mapping[str, Target],
) -> Footprint:
    """What the model asks of the device's memory, from its metadata alone: the weights at
    every precision on offer, and the KV cache at the profile's context at the smallest
    element size the device's runtimes keep (llama.cpp's f16 cache: 2 bytes)."""
    usable = _device_recipes(recipes, targets, profile)
    kv_bytes = min(
        (targets[r.target].kv_cache_bytes for r in usable if r.target in targets), default=4
    )
    context = model_context(shape.dims.max_positions, profile)
    per_token = kv_elements_per_token(shape.dims) * kv_bytes if shape.decodes else None
    cache = kv_cache_elements(shape.dims, context) * kv_bytes if shape.decodes else 0.0
    experts = shape.experts
    return Footprint(
        model=name,
        parameters_total=shape.parameters_total,
        parameters_active=shape.parameters_active if shape.decodes else shape.parameters_total,
        num_experts=experts.num_experts if experts else None,
        experts_per_token=experts.experts_per_token if experts else None,
        num_shared_experts=experts.num_shared_experts if experts else None,
        weight_bytes={
            precision: round(shape.parameters_total * size)
            for precision, size in bytes_per_parameter(usable, targets, profile).items()
        },
        kv_cache_bytes_per_token=round(per_token) if per_token is not None else None,
        kv_cache_element_bytes=kv_bytes,
        context_tokens=context,
        kv_cache_bytes=round(cache),
        usable_memory_bytes=round(profile.usable_memory_mb * MIB),
        from_headers=shape.from_headers,
    )


def describe_footprint(found: Footprint) -> str:
    """The numbers of a footprint in words: parameters, weights per precision, KV cache."""
    total = f"{count_words(found.parameters_total)} parameters"
    if found.parameters_active != found.parameters_total:
        total += f" ({count_words(found.parameters_active)} active"
        if found.num_experts and found.experts_per_token:
            total += f": {found.experts_per_token} of {found.num_experts} experts"
            if found.num_shared_experts:
                total += f" + {found.num_shared_experts} shared"
        total += ")"
    if not found.from_headers:
        total += " (estimated from config.json)"
    weights = ", ".join(
        f"{bytes_words(size)} at {precision}" for precision, size in found.weight_bytes.items()
    )
    words = f"{total}; weights {weights}"
    if found.kv_cache_bytes_per_token is not None:
        words += (
            f"; KV cache {bytes_words(found.kv_cache_bytes_per_token)}/token, "
            f"{bytes_words(found.kv_cache_bytes)} at {found.context_tokens:,} tokens"
        )
    return words


def does_not_fit(found: Footprint, profile: DeviceProfile) -> str | None:
    """Why nothing the catalogue offers can fit, or None when something might.

    A lower bound: the smallest weights and the cache alone, without activations or the
    runtime, so it never refuses what the planner's per-recipe estimate would keep. The
    message says what would fit instead: the context that leaves room, or the largest
    model the device holds at the smallest precision.
    """
    precision, weights = found.smallest_weights
    usable = found.usable_memory_bytes
    if weights + found.kv_cache_bytes <= usable:
        return None
    device = (
        f"the device gives a model {bytes_words(usable)} of its "
        f"{bytes_words(profile.memory_mb * MIB)}"
    )
    head = f"nothing fits {profile.id}: {found.model} has {describe_footprint(found)}; {device}"
    if weights <= usable and found.kv_cache_bytes:
        # The cache grows about linearly with the context (less with windows or a state).
        tokens = int(found.context_tokens * (usable - weights) / found.kv_cache_bytes)
        return (
            f"{head}: the {precision} weights fit but not the KV cache of "
            f"{found.context_tokens:,} tokens; at most ~{tokens:,} tokens of context would"
        )
    per_parameter = weights / max(1, found.parameters_total)
    room = usable - found.kv_cache_bytes
    largest = (
        f"at {precision} it holds a model of at most {count_words(room / per_parameter)} "
        "parameters with this context"
        if room > 0
        else "the KV cache alone is larger than that"
    )
    return f"{head}: the {precision} weights alone need {weights / usable:,.0f}× that; {largest}"


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
