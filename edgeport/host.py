"""Probe the machine edgeport runs on and describe it as a DeviceProfile (`--profile host`)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from edgeport import __version__
from edgeport.backends import get_backend
from edgeport.schemas import CpuFeature, CpuSpec, DeviceProfile, RuntimeSupport

if TYPE_CHECKING:
    from collections.abc import Iterable

    from edgeport.schemas import Target

logger = logging.getLogger(__name__)

# /proc/cpuinfo flag -> edgeport feature name. Linux spells some flags differently on
# x86 ("avx512_vnni") and arm ("asimddp" for dotprod, "asimdhp" for fp16 arithmetic).
_LINUX_FLAGS: dict[str, str] = {
    "sse4_2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "asimd": "neon",
    "neon": "neon",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}
_KNOWN_FEATURES = frozenset(get_args(CpuFeature))
# Comma-separated edgeport feature names that replace the probed ones (empty: none).
HOST_FEATURES_ENV = "EDGEPORT_HOST_FEATURES"


def normalise_arch(machine: str) -> str:
    machine = machine.lower()
    if machine in {"x86_64", "amd64"}:
        return "x86_64"
    if machine in {"aarch64", "arm64"}:
        return "arm64"
    if machine.startswith("armv7"):
        return "armv7"
    return machine


def features_from_cpuinfo(text: str) -> list[str]:
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            flags.update(value.split())
    features = {_LINUX_FLAGS[flag] for flag in flags if flag in _LINUX_FLAGS}
    return sorted(feature for feature in features if feature in _KNOWN_FEATURES)


# macOS: `sysctl hw.optional machdep.cpu` keys (value 1 = present) and CPUID words.
_SYSCTL_KEYS: dict[str, str] = {
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.neon_fp16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SVE": "sve",
    "hw.optional.arm.FEAT_SVE2": "sve2",
    "hw.optional.sse4_2": "sse4_2",
    "hw.optional.avx1_0": "avx",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vl": "avx512vl",
}
_SYSCTL_CPUID_WORDS: dict[str, str] = {
    "SSE4.2": "sse4_2",
    "AVX1.0": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
}


def features_from_sysctl(text: str) -> list[str]:
    """CPU features from `sysctl hw.optional machdep.cpu` output (macOS)."""
    features: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in _SYSCTL_KEYS and value == "1":
            features.add(_SYSCTL_KEYS[key])
        elif key.startswith("machdep.cpu.") and key.endswith("features"):
            words = value.upper().split()
            features.update(_SYSCTL_CPUID_WORDS[w] for w in words if w in _SYSCTL_CPUID_WORDS)
    return sorted(feature for feature in features if feature in _KNOWN_FEATURES)


def sysctl_cpu_name(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "machdep.cpu.brand_string":
            return value.strip() or None
    return None


def cpu_model_name(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"model name", "hardware", "cpu model"}:
            return value.strip() or None
    return None


def total_memory_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total // (1024 * 1024))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def order_devices(reported: Iterable[str], target: Target) -> list[str]:
    """Devices the target knows, without duplicates, its CPU device first.

    The CPU device comes first because it is the one edgeport can validate on the build
    host; move an accelerator up in the saved profile to prefer it.
    """
    known = [name for name in dict.fromkeys(reported) if name in target.devices]
    cpu = target.devices[0]
    return sorted(known, key=lambda name: name != cpu) or [cpu]


def _distribution_installed(name: str) -> bool:
    """Whether the pip distribution is installed (a target's device package names a
    distribution, whose module may be named otherwise: llama-cpp-python is llama_cpp)."""
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def installed_runtimes(targets: dict[str, Target]) -> list[RuntimeSupport]:
    """Targets whose runtime is importable here, with the devices it reports."""
    runtimes = []
    for target in targets.values():
        if not _distribution_installed(target.device_packages[0]):
            continue
        reported: list[str] = []
        try:
            # The target's backend knows how to ask its runtime; the runtime is imported
            # only now, when probed: it is optional and slow to import.
            reported = get_backend(target).host_devices()
        except Exception as exc:  # a broken runtime or backend: fall back to its CPU device
            logger.debug("probing %s devices failed: %s", target.id, exc)
        runtimes.append(RuntimeSupport(target=target.id, devices=order_devices(reported, target)))
    return runtimes


def _sysctl_text() -> str:
    try:
        result = subprocess.run(
            ["sysctl", "hw.optional", "machdep.cpu"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout


def probe_cpu() -> CpuSpec:
    """Architecture, usable cores, model name and ISA features of this machine's CPU."""
    arch = normalise_arch(platform.machine())
    cpuinfo_path = Path("/proc/cpuinfo")
    if cpuinfo_path.exists():
        cpuinfo = cpuinfo_path.read_text(encoding="utf-8", errors="replace")
        features, name = features_from_cpuinfo(cpuinfo), cpu_model_name(cpuinfo)
    elif sys.platform == "darwin":
        text = _sysctl_text()
        features, name = features_from_sysctl(text), sysctl_cpu_name(text)
    else:  # Windows and others: no portable source of ISA flags without extra packages
        features, name = [], platform.processor() or None
    override = os.environ.get(HOST_FEATURES_ENV)
    if override is not None:
        # The build host's ISA decides how candidates are ranked (selection.host_gap); this
        # lets a VNNI machine behave as an AVX2-only one, and tests pin the host they need.
        features = [name.strip() for name in override.split(",") if name.strip()]
        unknown = sorted(set(features) - _KNOWN_FEATURES)
        if unknown:
            from edgeport.errors import BadInputError

            raise BadInputError(
                f"{HOST_FEATURES_ENV}: unknown feature(s) {', '.join(unknown)[:200]}; "
                f"known: {', '.join(sorted(_KNOWN_FEATURES))}"
            )
    if arch == "arm64" and "neon" not in features:
        features.append("neon")  # every arm64 CPU has Advanced SIMD
    return CpuSpec.model_validate(
        {"arch": arch, "cores": available_cores(), "name": name, "features": features}
    )


def probe_host_profile(targets: dict[str, Target], profile_id: str = "host") -> DeviceProfile:
    cpu = probe_cpu()
    memory_mb = total_memory_mb()
    runtimes = installed_runtimes(targets) or [
        RuntimeSupport(target="onnxruntime", devices=["CPUExecutionProvider"])
    ]
    return DeviceProfile.model_validate(
        {
            "id": profile_id,
            "name": f"{cpu.name or cpu.arch} with {memory_mb / 1024:.0f} GB",
            "source": f"probed by edgeport {__version__} on {platform.system() or 'an unknown OS'} "
            "(CPU flags, total memory, devices the installed runtimes report)",
            "cpu": cpu,
            "memory_mb": memory_mb,
            "runtimes": runtimes,
        }
    )
