"""The typed objects that flow between stages, and the schemas of the YAML catalogues.

Catalogue models (DeviceProfile, Recipe, Target) reject unknown keys so a typo in a
contributed profile is an error, not a silently ignored field. Everything is frozen:
stages pass values on, they never rewrite what they were given.
"""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    model_validator,
)

SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=80)]

Arch = Literal["x86_64", "arm64", "armv7"]
CpuFeature = Literal[
    # x86
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    # arm
    "neon",
    "fp16",
    "dotprod",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
]
Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
# Model families, and the kinds of part a multi-part model's graphs are (the kinds recipes
# name in `requires.families`): Whisper's encoder is a speech-encoder, its decoder (and
# T5's) a seq2seq-decoder.
Family = Literal[
    "encoder",
    "decoder",
    "encoder-decoder",
    "vision",
    "image-text",
    "audio",
    "diffusion",
    "speech",
    "text2text",
    "speech-encoder",
    "text2text-encoder",
    "seq2seq-decoder",
]
AcceleratorKind = Literal["gpu", "igpu", "npu", "dsp"]

# CPU features that give a real int8 dot-product instruction (VNNI-class); without one,
# int8 kernels still run but gain far less over fp32.
INT8_DOT_FEATURES: frozenset[str] = frozenset(
    {"avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"}
)
# CPU features that execute fp16 arithmetic natively (not just convert it).
FP16_ARITH_FEATURES: frozenset[str] = frozenset({"fp16", "avx512_fp16"})


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- profiles


class CpuSpec(StrictModel):
    arch: Arch
    cores: PositiveInt
    name: str | None = None
    features: list[CpuFeature] = Field(default_factory=list)


class Accelerator(StrictModel):
    kind: AcceleratorKind
    vendor: str
    name: str
    memory_mb: PositiveInt | None = Field(
        default=None, description="Dedicated memory; omit when it shares system RAM."
    )
    precisions: list[Precision] = Field(default_factory=list)


class RuntimeSupport(StrictModel):
    target: Slug = Field(description="A target id from targets/*.yaml.")
    devices: list[str] = Field(
        min_length=1,
        description="Execution providers (ONNX Runtime) or device names (OpenVINO), "
        "in preference order.",
    )


class DeviceProfile(StrictModel):
    id: Slug
    name: str
    source: str | None = Field(default=None, description="Where the numbers come from.")
    cpu: CpuSpec
    memory_mb: PositiveInt = Field(description="Installed RAM in MiB.")
    usable_memory_fraction: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Share of RAM a model may use; the OS and other processes need the rest.",
    )
    accelerator: Accelerator | None = None
    runtimes: list[RuntimeSupport] = Field(min_length=1)
    context_length: PositiveInt = Field(
        default=2048, description="Tokens of context a language model must hold (KV cache)."
    )
    sequence_length: PositiveInt = Field(
        default=128, description="Typical input length in tokens for encoders."
    )
    batch_size: PositiveInt = Field(default=1, description="Typical batch size on the device.")
    memory_bandwidth_gbs: float | None = Field(
        default=None,
        gt=0,
        description="Peak DRAM bandwidth in GB/s (1e9 bytes/s): channels x bus width x "
        "transfer rate of the memory the device ships with (say where in `source`). "
        "Decoding a language model reads every weight once per token, so this bounds the "
        "tokens/s the planner estimates; omit when unknown.",
    )

    @model_validator(mode="after")
    def _unique_runtimes(self) -> DeviceProfile:
        seen = [r.target for r in self.runtimes]
        if len(seen) != len(set(seen)):
            raise ValueError(f"runtimes lists a target twice: {seen}")
        return self

    @property
    def usable_memory_mb(self) -> float:
        return self.memory_mb * self.usable_memory_fraction

    @property
    def feature_set(self) -> frozenset[str]:
        return frozenset(self.cpu.features)

    def hardware_precisions(self, device: str) -> frozenset[str]:
        """Precisions the named device runs natively (not emulated)."""
        precisions = {"fp32", "int8"}
        if self.accelerator and device_is_accelerator(device):
            precisions.update(self.accelerator.precisions)
            return frozenset(precisions)
        if self.feature_set & FP16_ARITH_FEATURES:
            precisions.add("fp16")
        if self.feature_set & {"avx512_bf16", "amx_bf16", "bf16"}:
            precisions.add("bf16")
        return frozenset(precisions)

    def runtime(self, target_id: str) -> RuntimeSupport | None:
        return next((r for r in self.runtimes if r.target == target_id), None)


def device_is_accelerator(device: str) -> bool:
    """True for devices that are not the host CPU ("GPU", "NPU", "CUDAExecutionProvider")."""
    return device not in {"CPU", "CPUExecutionProvider", "XnnpackExecutionProvider"}


# --------------------------------------------------------------------------- targets

# Defined here, not with the recipes, because a Target declares the schemes it can build.
QuantScheme = Literal[
    "none", "fp16", "int8-dynamic", "int8-static", "int8-weight", "int4-weight", "gguf"
]
# llama.cpp's file types (`llama_ftype`) a `gguf` recipe may name, and the precision class
# each belongs to (K-quants mix types per tensor; the class is the bulk of the weights).
GgufType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS"]
# ggml tensor types a gguf recipe may ask for one tensor.
GgmlType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0"]
GGUF_PRECISION: dict[str, Precision] = {
    "F32": "fp32",
    "F16": "fp16",
    "BF16": "bf16",
    "Q8_0": "int8",
    "Q6_K": "int8",
    "Q5_K_M": "int4",
    "Q4_K_M": "int4",
    "Q4_0": "int4",
    "IQ4_XS": "int4",
}
# "package.module:Class": checked for shape only; the module is imported when the backend is
# first used, so loading the catalogue (or `edgeport plan`) never pays for a runtime import.
BACKEND_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class Target(StrictModel):
    id: Slug
    name: str
    formats: list[str] = Field(min_length=1)
    host_modules: list[str] = Field(
        description="Python modules the build host must import to export for this target."
    )
    extra: str | None = Field(default=None, description="pip extra that installs host_modules.")
    device_packages: list[str] = Field(
        description="pip packages the bundle's runner needs on the device."
    )
    devices: list[str] = Field(min_length=1, description="Devices or execution providers.")
    precisions: list[Precision]
    families: list[Family]
    runtime_overhead_mb: PositiveInt = Field(
        description="Resident memory of the runtime itself, before the model."
    )
    kv_cache_bytes: int = Field(
        default=4,
        ge=1,
        le=8,
        description="Bytes per element of the KV cache the runtime keeps by default (fp32: "
        "4; llama.cpp's f16 cache: 2): the planner's memory estimate for language models.",
    )
    decoder_weight_copies: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Compiled copies of a language model's weights the runner holds while "
        "it generates (OpenVINO: 2, the prompt's graph and a one-token graph for the "
        "generated tokens): the planner's memory estimate for language models.",
    )
    backend: str = Field(
        pattern=BACKEND_PATTERN,
        max_length=200,
        description="The class that exports, builds and loads for this target, as "
        "'package.module:Class' (imported only when used).",
    )
    schemes: list[QuantScheme] = Field(
        min_length=1,
        description="Quantisation schemes the backend can build; the planner drops recipes "
        "that name another.",
    )
    runner: Slug = Field(
        description="Runner flavour: the name under which the bundle's on-device code "
        "loads this target's model files."
    )

    def install_command(self) -> str:
        if self.extra:
            return f'pip install -c constraints.txt "edgeport[{self.extra}]"'
        return "pip install -c constraints.txt edgeport"


# --------------------------------------------------------------------------- recipes


class GraphOptimization(StrictModel):
    transformer_fusion: bool = Field(
        default=False,
        description="Fuse attention/layernorm/gelu subgraphs into single kernels.",
    )
    remove_padding: bool = Field(
        default=False,
        description=(
            "Encoders: run the token-wise layers on the real tokens of a padded batch only "
            "(attention still sees the padded layout). Exact; checked against the unchanged "
            "graph at build time. CPU only; on ONNX Runtime it needs transformer_fusion "
            "(the fused Attention op); ignored for decoders."
        ),
    )


# MatMulNBits' accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute.
AccuracyLevel = Literal[0, 1, 2, 3, 4]


class Quantization(StrictModel):
    scheme: QuantScheme = "none"
    per_channel: bool = False
    format: Literal["QDQ", "QOperator"] = "QOperator"
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["int8", "uint8"] = "uint8"
    reduce_range: bool = False
    op_types: list[str] | None = Field(
        default=None, description="Operator types to quantise; all supported ones when omitted."
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    symmetric: bool = True
    group_size: PositiveInt | None = Field(default=None, description="Weight-only block size.")
    ratio: float | None = Field(default=None, gt=0, le=1, description="Share of int4 layers.")
    keep_io_float: bool = Field(default=True, description="fp16: keep inputs/outputs fp32.")
    all_layers: bool | None = Field(
        default=None,
        description="Weight-only (NNCF): also compress embeddings and the last layer to int4.",
    )
    ignored_patterns: list[str] = Field(
        default_factory=list, description="Regexes of node names to leave unquantised (NNCF)."
    )
    model_type: Literal["auto", "transformer", "cnn"] = Field(
        default="auto",
        description="int8-static (NNCF): the model type NNCF quantises for; auto: transformer "
        "when the model has attention heads, else a convolutional network.",
    )
    smooth_quant_alpha: float | None = Field(
        default=None, ge=-1, le=1, description="int8-static (NNCF): SmoothQuant alpha; -1 off."
    )
    exclude_nodes: list[str] = Field(
        default_factory=list,
        description="Exact names of nodes kept in float (mixed precision); written by the "
        "sensitivity search and recorded in the manifest.",
    )
    int8_constants: bool = Field(
        default=False,
        description="ONNX Runtime dynamic int8: also store the other large float constants "
        "(Whisper's positional embeddings, convolution weights) as int8 with one scale per "
        "row, dequantised when the session loads: smaller on disk, the same kernels.",
    )
    mixed_precision: bool = Field(
        default=False,
        description="When the fully quantised model misses the tolerance, keep the most "
        "sensitive nodes in float, one group at a time, until it passes or is no faster "
        "than float.",
    )
    keep_int8_patterns: list[str] = Field(
        default_factory=list,
        description="Weight-only int4: regexes (re.search) of weight node names kept at 8 bits, "
        "such as the most sensitive layer (`layers[./]0[./]`) or every `[./]v_proj[./]`.",
    )
    algorithm: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description="Weight-only int4: round-to-nearest, or GPTQ on the calibration texts "
        "(OpenVINO/NNCF).",
    )
    int8_group_size: PositiveInt | None = Field(
        default=None,
        description="Weight-only (ONNX Runtime MatMulNBits): block size of the 8-bit weights; "
        "256 when omitted.",
    )
    embedding_precision: Literal["fp32", "int8"] = Field(
        default="int8",
        description="Weight-only (ONNX Runtime): token embeddings, int8 with one scale per row.",
    )
    lm_head_precision: Literal["fp32", "int8", "int4"] = Field(
        default="int8",
        description="Weight-only: the output projection to the vocabulary. ONNX Runtime "
        "quantises a head tied to the token embeddings once, at this precision, and shares "
        "it with the embedding lookup; OpenVINO (int4 recipes; int8 is NNCF's backup mode, "
        "fp32 is not offered) gives an int4 head its own copy and keeps the embeddings int8.",
    )
    lm_head_group_size: PositiveInt | None = Field(
        default=None,
        description="Weight-only: block size of the output projection; group_size (or, ONNX "
        "Runtime's 8-bit heads, int8_group_size) when omitted. ONNX Runtime: a tied embedding "
        "table shares it, and with int8 compute (accuracy_level 4) the head's input is "
        "quantised in blocks of this size too.",
    )
    lm_head_symmetric: bool | None = Field(
        default=None,
        description="Weight-only int4 head: symmetric, or with a zero point per block; as "
        "the layers (`symmetric`) when omitted. 8-bit heads and ONNX Runtime's tied heads "
        "are always symmetric.",
    )
    accuracy_level: AccuracyLevel | None = Field(
        default=None,
        description="Weight-only (ONNX Runtime MatMulNBits): the lowest precision the kernel "
        "may compute in: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations "
        "quantised per block to int8, integer dot products). The planner resolves it for "
        "the device from accuracy_level_by_feature; the manifest records what ran.",
    )
    accuracy_level_by_feature: dict[CpuFeature, AccuracyLevel] = Field(
        default_factory=dict,
        description="accuracy_level on CPUs with this feature; the first one the device has "
        "wins, accuracy_level applies when none does. Decided from the profile, never from "
        "the build host: the same device gets the same file on any host.",
    )
    group_size_by_feature: dict[CpuFeature, PositiveInt] = Field(
        default_factory=dict,
        description="Weight-only: group_size on CPUs with this feature (first match wins).",
    )
    gguf_type: GgufType | None = Field(
        default=None,
        description="Scheme gguf (llama.cpp): the file type llama.cpp's quantiser writes "
        "(Q4_K_M, Q8_0, ...; F16/BF16/F32 unquantised). Required by that scheme, refused "
        "by the others.",
    )
    gguf_token_embedding_type: GgmlType | None = Field(
        default=None,
        description="Scheme gguf: the type of the token embedding table (llama.cpp's "
        "token_embedding_type); the file type's own choice when omitted. A table tied to "
        "the output head is the head, and keeps llama.cpp's choice for it.",
    )
    gguf_tensor_types: dict[str, GgmlType] = Field(
        default_factory=dict,
        description="Scheme gguf: regex (re.search on GGUF tensor names, such as "
        "`blk\\.0\\.` or `attn_v`) -> ggml type, for weight matrices kept at another type "
        "than llama.cpp chose (the most sensitive layers at Q6_K over a 4-bit file); "
        "re-quantised from the float export with the importance matrix when there is one.",
    )
    importance_matrix: bool = Field(
        default=False,
        description="Scheme gguf: weigh each weight column by its mean squared activation "
        "on the calibration texts when quantising (llama.cpp's importance matrix).",
    )
    gguf_fit: bool = Field(
        default=False,
        description="Scheme gguf: choose each weight matrix's type among gguf_fit_types to "
        "fit a byte budget (--max-size, else the weights' share of the device's memory): "
        "every matrix starts at the cheapest type its rows fit, then the matrix whose "
        "importance-weighted quantisation error drops the most per extra byte is upgraded, "
        "until the budget is spent. The token embeddings keep gguf_token_embedding_type.",
    )
    gguf_fit_types: list[GgmlType] = Field(
        default_factory=list,
        description="Scheme gguf with gguf_fit: the ggml types a matrix may get "
        "(Q4_K, Q5_K, Q6_K, Q8_0, ...).",
    )

    @model_validator(mode="after")
    def _gguf_type_with_its_scheme(self) -> Quantization:
        if self.scheme == "gguf" and self.gguf_type is None:
            raise ValueError("scheme gguf needs gguf_type (Q4_K_M, Q8_0, F16, ...)")
        gguf_only = (
            self.gguf_type,
            self.gguf_token_embedding_type,
            self.importance_matrix or None,
            self.gguf_tensor_types or None,
            self.gguf_fit or None,
            self.gguf_fit_types or None,
        )
        if self.scheme != "gguf" and any(value is not None for value in gguf_only):
            raise ValueError(
                "gguf_type, gguf_token_embedding_type, gguf_tensor_types, importance_matrix "
                "and gguf_fit apply only to scheme gguf"
            )
        if self.gguf_fit and not self.gguf_fit_types:
            raise ValueError("gguf_fit needs gguf_fit_types (the types a matrix may get)")
        if self.gguf_fit_types and not self.gguf_fit:
            raise ValueError("gguf_fit_types applies only with gguf_fit: true")
        for pattern in self.gguf_tensor_types:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"gguf_tensor_types: bad regex {pattern!r}: {exc}") from exc
        return self

    def for_features(self, features: frozenset[str]) -> Quantization:
        """This quantisation with the device-dependent knobs resolved for a CPU's features."""
        update: dict[str, object] = {}
        level = next((v for f, v in self.accuracy_level_by_feature.items() if f in features), None)
        if level is not None:
            update["accuracy_level"] = level
        group = next((v for f, v in self.group_size_by_feature.items() if f in features), None)
        if group is not None:
            update["group_size"] = group
        return self.model_copy(update=update) if update else self

    @property
    def head_symmetric(self) -> bool:
        """Whether an int4 output head is symmetric: `lm_head_symmetric`, else as the layers."""
        return self.symmetric if self.lm_head_symmetric is None else self.lm_head_symmetric

    @property
    def precision(self) -> Precision:
        if self.scheme == "gguf":
            return GGUF_PRECISION[self.gguf_type or "F32"]
        return {
            "none": "fp32",
            "fp16": "fp16",
            "int8-dynamic": "int8",
            "int8-static": "int8",
            "int8-weight": "int8",
            "int4-weight": "int4",
        }[self.scheme]  # type: ignore[return-value]


class Requirements(StrictModel):
    cpu_features_any: list[CpuFeature] = Field(
        default_factory=list, description="At least one of these CPU features."
    )
    hardware_precision: bool = Field(
        default=False,
        description="Only for devices that run the recipe's precision natively.",
    )
    families: list[Family] = Field(default_factory=list, description="Empty: every family.")


class Tolerance(StrictModel):
    embedding_cosine_min: float | None = Field(default=None, ge=-1, le=1)
    embedding_cosine_mean_min: float | None = Field(default=None, ge=-1, le=1)
    top1_agreement_min: float | None = Field(default=None, ge=0, le=1)
    logit_cosine_min: float | None = Field(
        default=None, ge=-1, le=1, description="Image classifiers: worst cosine of the logits."
    )
    next_token_agreement_min: float | None = Field(default=None, ge=0, le=1)
    perplexity_increase_max: float | None = Field(default=None, ge=0)
    generation_match_min: float | None = Field(default=None, ge=0, le=1)
    # Encoder-decoders (speech recognition, translation), judged by what they say.
    output_identical_min: float | None = Field(
        default=None, ge=0, le=1, description="Share of inputs whose greedy output is identical."
    )
    wer_max: float | None = Field(
        default=None, ge=0, description="Word error rate against the original's transcripts."
    )
    chrf_min: float | None = Field(
        default=None, ge=0, le=100, description="chrF (0-100) against the original's outputs."
    )
    teacher_forced_agreement_min: float | None = Field(
        default=None, ge=0, le=1, description="Next-token agreement along the original's outputs."
    )
    token_agreement_min: float | None = Field(
        default=None, ge=0, le=1, description="1 - token edits / tokens, golden outputs (verify)."
    )
    empty_outputs_max: float | None = Field(
        default=None, ge=0, description="Empty outputs where the original says something."
    )


class Expectation(StrictModel):
    size_factor: float = Field(gt=0, description="Model bytes relative to fp32 weights.")
    size_factor_max: float | None = Field(
        default=None,
        gt=0,
        description="Recipes that fit their size to a budget (gguf_fit): model bytes relative "
        "to fp32 with all the room they want; size_factor is then their smallest. The "
        "planner estimates the size as this, capped by the budget.",
    )
    speedup: float = Field(gt=0, description="Latency speedup vs fp32 on a plain CPU.")
    speedup_by_feature: dict[CpuFeature, float] = Field(
        default_factory=dict,
        description="Speedup on CPUs with this feature; the first one the device has wins.",
    )
    graph_speedup: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="The part of `speedup` that comes from graph rewrites (fusion, padding "
        "removal), the same on every CPU. A device calibration measures the kernels of each "
        "precision and runtime (calibrations/<profile>.yaml); the planner multiplies that "
        "measurement by this factor for encoders.",
    )

    def speedup_on(self, features: frozenset[str]) -> float:
        for feature, speedup in self.speedup_by_feature.items():
            if feature in features:
                return speedup
        return self.speedup


class Recipe(StrictModel):
    id: Slug
    description: str
    target: Slug
    safety: int = Field(
        ge=0, description="0 = numerically faithful; larger = more aggressive. Fallback order."
    )
    graph: GraphOptimization = GraphOptimization()
    quantize: Quantization = Quantization()
    requires: Requirements = Requirements()
    tolerance: Tolerance = Tolerance()
    expect: Expectation
    baseline: bool = Field(
        default=False,
        description="The yardstick of speed: every latency ratio (`vs fp32`), calibration "
        "speedup and `expect.speedup` is relative to this recipe's target running its plain "
        "fp32 export, measured on the target's first device. Exactly one recipe of a "
        "catalogue is the baseline; it must be a plain export (scheme none, no graph "
        "rewrites).",
    )

    @property
    def precision(self) -> Precision:
        return self.quantize.precision


# --------------------------------------------------------------------------- calibrations

# What a calibration measures, per runtime: a scheme (fp32 for "none"), ONNX Runtime's
# static int8 by format, or a bare precision (a hand-written entry for every int8 scheme).
CalibrationKey = Literal[
    "fp32",
    "fp16",
    "bf16",
    "int8",
    "int4",
    "int8-dynamic",
    "int8-static",
    "int8-static-qdq",
    "int8-static-qoperator",
    "int8-weight",
    "int4-weight",
]
CalibrationShape = Literal["batch", "decode"]
Speedup = Annotated[float, Field(gt=0, lt=1000)]
SpeedupTable = dict[Slug, dict[CalibrationKey, Speedup]]
Milliseconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# QDQ and QOperator are ONNX Runtime's two static int8 formats, and run different kernels
# there: its calibrations time them apart.
_ONNX_RUNTIME = "onnxruntime"
# Speedups are written to 4 significant digits: tables agree within this.
_AGREE_REL, _AGREE_ABS = 0.01, 0.002


def calibration_keys(recipe: Recipe) -> tuple[str, ...]:
    """The calibration entries a recipe matches, most specific first: ONNX Runtime's static
    int8 by format (QDQ and QOperator run different kernels there), its scheme (fp32 for
    none), then its precision."""
    quantize = recipe.quantize
    keys: list[str] = ["fp32" if quantize.scheme == "none" else quantize.scheme, recipe.precision]
    if quantize.scheme == "int8-static" and recipe.target == _ONNX_RUNTIME:
        keys.insert(0, f"int8-static-{quantize.format.lower()}")
    return tuple(dict.fromkeys(keys))


def calibration_entry(recipe: Recipe) -> tuple[str, CalibrationKey]:
    """(target, key): where a calibration's tables time `recipe`; for the catalogue's
    baseline recipe, the entry every speedup divides by."""
    # The first key is the scheme (fp32 for none) or ONNX Runtime's static int8 by format:
    # always one of CalibrationKey's.
    return recipe.target, cast(CalibrationKey, calibration_keys(recipe)[0])


class MeasuredOn(StrictModel):
    """The device a calibration was measured on, as its probe reported it (no host name)."""

    cpu: str | None = Field(default=None, description="CPU model name.")
    arch: str | None = None
    features: list[str] = Field(
        default_factory=list, description="ISA features, spelt as profiles spell them."
    )
    flags: str = Field(default="", description="The CPU's own flag list (/proc/cpuinfo).")
    cores: PositiveInt | None = None
    memory_mb: PositiveInt | None = None
    os: str | None = None
    python: str | None = None
    packages: dict[str, str] = Field(
        default_factory=dict, description="Versions of numpy and the runtimes measured."
    )


class CalibrationMethod(StrictModel):
    """How the reference graphs were made and timed."""

    graph: str = Field(description="The reference graph, in words.")
    layers: PositiveInt
    hidden: PositiveInt
    shapes: dict[CalibrationShape, list[PositiveInt]] = Field(
        description="Input shape of each timed shape: batch (rows of tokens through every "
        "layer, as an encoder or a prompt), decode (one token, as a decoding step)."
    )
    threads: PositiveInt
    warmup: int = Field(ge=0)
    runs: PositiveInt
    statistic: Literal["median"] = "median"
    seed: int = 0
    variants: dict[str, str] = Field(
        default_factory=dict, description="`target/key`: how that graph was made."
    )


class SkippedMeasurement(StrictModel):
    target: Slug
    key: CalibrationKey | None = None
    reason: str


class Calibration(StrictModel):
    """Speedups measured on a device for one profile: `calibrations/<profile>.yaml`.

    `speedups` (batch shape) and `decode_speedups` (one token) are relative to ONNX
    Runtime fp32 on the same device, so runtimes compare; `speedups_vs_own_fp32` relative
    to each runtime's own fp32. The planner prefers them to the recipes' guesses.
    """

    profile: Slug = Field(description="The profile id; also the file name.")
    date: AwareDatetime = Field(description="When it was measured (UTC).")
    edgeport_version: str
    measured_on: MeasuredOn
    method: CalibrationMethod | None = None
    speedups: SpeedupTable = Field(
        description="target -> key -> speedup over ONNX Runtime fp32 on this device, batch "
        "shape (what encoders and prompts run)."
    )
    speedups_vs_own_fp32: SpeedupTable = Field(default_factory=dict)
    decode_speedups: SpeedupTable = Field(
        default_factory=dict,
        description="target -> key -> speedup over ONNX Runtime fp32 for one token (what a "
        "language model's decoding step runs).",
    )
    latency_ms: dict[CalibrationShape, dict[Slug, dict[CalibrationKey, Milliseconds]]] = Field(
        default_factory=dict, description="The medians the speedups come from."
    )
    skipped: list[SkippedMeasurement] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def measured(self, recipe: Recipe, decode: bool = False) -> tuple[str, float] | None:
        """The entry matching `recipe` (key, speedup over ONNX Runtime fp32), or None."""
        table = (self.decode_speedups if decode else self.speedups).get(recipe.target, {})
        for key in calibration_keys(recipe):
            if key in table:
                return key, table[key]
        return None

    @property
    def label(self) -> str:
        """`<cpu> (calibration YYYY-MM-DD)`, for reasons and tables."""
        cpu = self.measured_on.cpu or self.profile
        return f"{cpu} (calibration {self.date.astimezone(UTC):%Y-%m-%d})"

    def problems(self, baseline: Recipe) -> list[str]:
        """`field: reason` for tables that disagree with each other (the schema checks the
        rest): the entry of the catalogue's `baseline` recipe is 1, each runtime's own fp32
        is 1, the speedups are the ratios of the latencies, and speedups_vs_own_fp32 =
        speedups / that runtime's fp32."""
        base_target, base_key = calibration_entry(baseline)
        problems: list[str] = []

        def check(where: str, value: float, expected: float, why: str) -> None:
            if abs(value - expected) > _AGREE_ABS + _AGREE_REL * expected:
                problems.append(f"{where}: {value:g} disagrees with {why} ({expected:.3g})")

        for name, table in (("speedups", self.speedups), ("decode_speedups", self.decode_speedups)):
            base = table.get(base_target, {}).get(base_key)
            if base is not None:
                check(f"{name}.{base_target}.{base_key}", base, 1.0, "the baseline itself")
        for target, row in self.speedups_vs_own_fp32.items():
            for key, value in row.items():
                own = self.speedups.get(target, {}).get("fp32")
                vs_base = self.speedups.get(target, {}).get(key)
                if own is not None and vs_base is not None:
                    check(
                        f"speedups_vs_own_fp32.{target}.{key}",
                        value,
                        vs_base / own,
                        f"speedups.{target}.{key} / speedups.{target}.fp32",
                    )
        shapes: tuple[tuple[CalibrationShape, str, SpeedupTable], ...] = (
            ("batch", "speedups", self.speedups),
            ("decode", "decode_speedups", self.decode_speedups),
        )
        for shape, name, table in shapes:
            latency = self.latency_ms.get(shape, {})
            base_ms = latency.get(base_target, {}).get(base_key)
            for target, row in table.items():
                for key, value in row.items():
                    ms = latency.get(target, {}).get(key)
                    if base_ms is not None and ms is not None:
                        check(
                            f"{name}.{target}.{key}",
                            value,
                            base_ms / ms,
                            f"latency_ms.{shape}: {base_ms:g} / {ms:g} ms",
                        )
        return problems


# --------------------------------------------------------------------------- model


class ModelDims(StrictModel):
    hidden_size: int | None = None
    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    max_positions: int | None = None
    # The KV cache's layout, read from config.json by edgeport.model_shape (None: not read,
    # the cache is then 2 x layers x kv_heads x head_dim per token). Elements, not bytes:
    # the runtime's element size (Target.kv_cache_bytes) multiplies them.
    attention: str | None = Field(
        default=None,
        description="The attention layout the cache follows: gqa (mha is gqa with as many "
        "KV heads as heads), mla (multi-head latent attention), with +sliding or +linear "
        "when some layers keep a window or a constant state instead.",
    )
    kv_elements_per_token: int | None = Field(
        default=None,
        ge=0,
        description="KV cache elements one token adds in the layers that keep every token.",
    )
    window_kv_elements_per_token: int = Field(
        default=0,
        ge=0,
        description="KV cache elements one token adds in the sliding-window layers, which "
        "keep at most `sliding_window` tokens.",
    )
    sliding_window: int | None = Field(default=None, gt=0)
    state_elements: int = Field(
        default=0,
        ge=0,
        description="Constant recurrent state of the linear-attention layers (Gated "
        "DeltaNet, Mamba): what they keep instead of a per-token cache.",
    )


class Experts(StrictModel):
    """A mixture of experts: what decides how many parameters one token reads."""

    num_experts: int = Field(gt=0, description="Routed experts per MoE layer.")
    experts_per_token: int = Field(gt=0, description="Routed experts each token uses.")
    num_shared_experts: int = Field(default=0, ge=0, description="Experts every token uses.")


class ModelInfo(StrictModel):
    source: str = Field(description="What the user asked for: Hub id or folder.")
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    local_path: Path
    task: str
    family: Family
    model_type: str
    architectures: list[str] = Field(default_factory=list)
    parameter_count: int = Field(description="Every parameter: what must fit in memory.")
    parameters_active: int | None = Field(
        default=None,
        description="Parameters one decoded token reads (a mixture of experts skips the "
        "routed experts it does not use; encoder towers and multi-token-prediction heads "
        "are not read); None: all of them.",
    )
    experts: Experts | None = None
    weight_dtype: str
    weight_bytes: int
    files: list[str]
    dims: ModelDims = ModelDims()
    pooling: Literal["mean", "cls", "max", "none"] = "none"
    normalize_embeddings: bool = False
    max_length: int = 512

    @property
    def display_name(self) -> str:
        return self.repo_id or self.source

    @property
    def active_parameter_count(self) -> int:
        """What one decoding step reads, the bound on decode speed."""
        return (
            self.parameters_active if self.parameters_active is not None else self.parameter_count
        )


# --------------------------------------------------------------------------- plan

SpeedSource = Literal["measured", "estimated"]


class Candidate(StrictModel):
    recipe: Recipe
    target: Target
    device: str
    estimated_memory_mb: float
    estimated_size_mb: float
    estimated_speedup: float
    reason: str
    speed_source: SpeedSource = Field(
        default="estimated",
        description="Where estimated_speedup comes from: the device's calibration "
        "(measured) or the recipe's expectation (estimated).",
    )
    float_parts: list[str] = Field(
        default_factory=list,
        description="Multi-part models: parts kept at full precision although the recipe "
        "fits them (the search's fallback when the quantised part failed the gate).",
    )
    max_model_bytes: int | None = Field(
        default=None,
        description="The user's hard limit on the model files (--max-size): an artifact "
        "over it is not shipped.",
    )
    size_budget_bytes: int | None = Field(
        default=None,
        description="Bytes a recipe that fits its size to a budget may give the model "
        "files: max_model_bytes when set, else the weights' share of the device's memory.",
    )

    @property
    def key(self) -> str:
        return f"{self.recipe.id}@{self.device}"


DropCode = Literal[
    "target", "runtime", "family", "scheme", "isa", "precision", "memory", "size", "extra"
]


class DroppedCandidate(StrictModel):
    recipe_id: str
    target_id: str
    code: DropCode
    reason: str
    estimated_memory_mb: float | None = Field(
        default=None, description="For memory drops: what the candidate would need."
    )
    estimated_size_mb: float | None = Field(
        default=None, description="For size drops: the model files' estimated size."
    )


class Footprint(StrictModel):
    """What a model asks of a device's memory, known from config.json and the safetensors
    headers alone: answered before any weight is downloaded (`plan --json` prints it)."""

    model: str
    parameters_total: int
    parameters_active: int
    num_experts: int | None = None
    experts_per_token: int | None = None
    num_shared_experts: int | None = None
    weight_bytes: dict[str, int] = Field(
        description="Bytes of the weights at each precision the catalogue's recipes for the "
        "device offer (their smallest size_factor: quantisation scales and the layers kept "
        "at higher precision included), largest first."
    )
    kv_cache_bytes_per_token: int | None = Field(
        description="KV cache bytes one token adds at kv_cache_element_bytes per element "
        "(all caching layers; sliding-window layers stop growing at their window); None "
        "for a model that does not decode."
    )
    kv_cache_element_bytes: int
    context_tokens: int = Field(description="The profile's context, capped by the model's.")
    kv_cache_bytes: int = Field(
        description="The KV cache (and any recurrent state) at context_tokens."
    )
    usable_memory_bytes: int = Field(description="What the device gives a model.")
    from_headers: bool = Field(
        description="Counted from the safetensors headers; False: estimated from config.json "
        "(no header was available without downloading weights)."
    )

    @property
    def smallest_weights(self) -> tuple[str, int]:
        """(precision, bytes) of the smallest weights the catalogue offers."""
        return min(self.weight_bytes.items(), key=lambda item: item[1])


class Plan(StrictModel):
    model: ModelInfo
    profile: DeviceProfile
    candidates: list[Candidate]
    dropped: list[DroppedCandidate]
    footprint: Footprint | None = None


# --------------------------------------------------------------------------- results


class OutputComparison(StrictModel):
    name: str
    reference_shape: list[int]
    candidate_shape: list[int]
    max_abs_error: float
    mean_abs_error: float


class MetricResult(StrictModel):
    name: str
    value: float
    threshold: float | None
    higher_is_better: bool
    passed: bool | None = Field(description="None when the recipe sets no threshold.")


class ValidationReport(StrictModel):
    task: str
    validation_samples: int
    calibration_samples: int
    outputs: list[OutputComparison]
    metrics: list[MetricResult]
    failures: list[str]
    notes: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def metric(self, name: str) -> float | None:
        return next((m.value for m in self.metrics if m.name == name), None)


class Measurement(StrictModel):
    latency_ms: float = Field(
        description="Median latency of one batch; language models: of one decoded token."
    )
    latency_p90_ms: float
    runs: int
    batch_size: int
    threads: int
    peak_memory_mb: float = Field(description="Resident memory added by loading and running.")
    model_bytes: int
    tokens_per_s: float | None = Field(
        default=None, description="Language models: greedy decoding speed with the KV cache."
    )
    time_to_first_token_ms: float | None = Field(
        default=None, description="Language models: prompt processing plus the first token."
    )


AttemptStatus = Literal["passed", "failed", "error", "skipped"]


class Attempt(StrictModel):
    recipe_id: str
    target_id: str
    device: str
    precision: Precision
    status: AttemptStatus
    detail: str = ""
    validation: ValidationReport | None = None
    measurement: Measurement | None = None
    latency_ratio: float | None = Field(
        default=None, description="Latency relative to the fp32 baseline of the same run."
    )
    excluded_nodes: list[str] = Field(default_factory=list)
    variant: str = Field(default="", description="How this attempt differs from its recipe.")
    duration_s: float = 0.0
    artifact_dir: Path | None = Field(default=None, exclude=True)
    over_size: bool = Field(
        default=False,
        exclude=True,
        description="Not shipped: its model files exceed the size limit (--max-size).",
    )


class FileEntry(StrictModel):
    path: str
    sha256: str
    bytes: int


class PartSpec(StrictModel):
    """One graph of a multi-part model (CLIP's image tower), as the bundle ships it."""

    name: str
    model_file: str
    files: list[str]
    input_names: list[str]
    output_names: list[str]
    precision: Precision


class RuntimeSpec(StrictModel):
    """What the on-device runner needs to know; read by run.py from manifest.json."""

    target: str
    runner: str = Field(
        default="",
        description="How ondevice.py loads the model (the target's runner flavour); "
        "bundles written before it existed use `target`.",
    )
    device: str
    task: str
    model_file: str
    input_names: list[str]
    output_names: list[str]
    # Text: how embeddings are pooled and inputs truncated; other families leave them.
    pooling: str = "none"
    normalize_embeddings: bool = False
    max_length: int = 0
    # Vision: the image processor's settings file, and the output an embedding comes from.
    preprocessor: str | None = None
    embedding_output: str | None = None
    threads: int
    precision: Precision
    pad_token_id: int = 0
    providers: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    eos_token_ids: list[int] = Field(
        default_factory=list, description="Language models: tokens that end generation."
    )
    parts: list[PartSpec] = Field(
        default_factory=list,
        description="Multi-part models: every graph, each loaded on its own; `model_file`, "
        "`input_names` and `output_names` above describe the first. Empty for one graph.",
    )
    # Zero-shot image classification: how label prompts are written and tokenised, and
    # how an image and a prompt embedding become a score.
    prompt_template: str | None = None
    padding: Literal["longest", "max_length"] = "longest"
    scores: Literal["softmax", "sigmoid"] | None = None
    logit_scale: float | None = Field(default=None, description="exp() of the model's own.")
    logit_bias: float | None = None
    # Encoder-decoders: greedy decoding as generation_config.json asks
    # (ondevice.DecodingRules), and the tokenizer.json run.py turns ids into text with.
    decoding: DecodingSpec | None = None
    tokenizer: str | None = None


class DecodingSpec(StrictModel):
    prompt: list[int] = Field(description="The decoder's first tokens (start, forced ones).")
    eos: list[int]
    suppress: list[int] = Field(default_factory=list)
    begin_suppress: list[int] = Field(default_factory=list)
    max_new_tokens: int = Field(gt=0)


class GoldenSpec(StrictModel):
    """Golden inputs and reference outputs shipped in the bundle (golden.npz), for verify.py."""

    file: str = "golden.npz"
    texts: list[str] = Field(
        description="One entry per golden sample (verify.py counts them): the text, cut to "
        "256 characters, for edgeport's built-in samples; `sha256:<hex> (N chars)` for a "
        "user's samples, which may be private and are never copied into the bundle."
    )
    texts_redacted: bool = Field(
        default=False, description="True when `texts` hold sha256 digests, not the texts."
    )
    tokens: list[int] = Field(description="Token count of each text (no padding).")
    input_names: list[str]
    output_names: list[str]
    sample_parts: list[str] = Field(
        default_factory=list,
        description="Multi-part models: the part each sample runs through (its input and "
        "output names are the part's in runtime.parts). Empty for one graph.",
    )
    thresholds: dict[str, float] = Field(
        description="Task metric -> minimum: the tolerance validation gated on, defaults filled in."
    )
    reference: str = "outputs of the original PyTorch model on the build host"


class VolatileFile(StrictModel):
    path: str
    fields: list[str] = Field(
        default_factory=list, description="JSON paths that vary; empty: the whole file."
    )
    why: str


class Reproducibility(StrictModel):
    """What two conversions of the same model, commit and recipe share, and what differs."""

    content_sha256: str = Field(
        description="sha256 over the 'path sha256' lines of every file not listed as volatile, "
        "then the line 'manifest.json#stable <manifest_sha256>'."
    )
    manifest_sha256: str = Field(
        description="sha256 of the canonical JSON (keys sorted, compact) of this manifest "
        "without this section, its volatile fields and the entries of volatile files."
    )
    stable_files: list[str]
    volatile: list[VolatileFile]
    notes: list[str] = Field(default_factory=list)


class Manifest(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # 2: the search record (attempts) is volatile; 1: only its timings were.
    format_version: int = 2
    edgeport_version: str
    created_by: str = "edgeport"
    model: dict[str, str | int | None]
    profile: DeviceProfile
    recipe: Recipe
    runtime: RuntimeSpec
    versions: dict[str, str]
    verdict: Literal["passed", "degraded"]
    metrics: dict[str, float]
    tolerance: Tolerance
    excluded_nodes: list[str]
    attempts: list[Attempt]
    files: list[FileEntry]
    notes: list[str] = Field(default_factory=list)
    golden: GoldenSpec | None = None
    reproducibility: Reproducibility | None = None


class ConversionResult(StrictModel):
    bundle: Path | None
    report: Path | None
    verdict: Literal["passed", "degraded", "failed"]
    chosen: Attempt | None
    attempts: list[Attempt]
    plan: Plan
