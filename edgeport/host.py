"""Probe the machine edgeport runs on and describe it as a DeviceProfile (`--profile host`)."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from typing import get_args

from edgeport.schemas import CpuFeature, CpuSpec, DeviceProfile, RuntimeSupport, Target

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


def installed_runtimes(targets: dict[str, Target]) -> list[RuntimeSupport]:
    """Targets whose runtime is importable here, CPU device only (what can be checked)."""
    runtimes = []
    for target in targets.values():
        module = target.device_packages[0].replace("-", "_")
        if importlib.util.find_spec(module) is None:
            continue
        runtimes.append(RuntimeSupport(target=target.id, devices=[target.devices[0]]))
    return runtimes


def probe_host_profile(targets: dict[str, Target], profile_id: str = "host") -> DeviceProfile:
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = cpuinfo_path.read_text(encoding="utf-8", errors="replace") if cpuinfo_path.exists() else ""
    arch = normalise_arch(platform.machine())
    features = features_from_cpuinfo(cpuinfo)
    if arch == "arm64" and "neon" not in features:
        features.append("neon")  # every arm64 CPU has Advanced SIMD
    runtimes = installed_runtimes(targets) or [
        RuntimeSupport(target="onnxruntime", devices=["CPUExecutionProvider"])
    ]
    return DeviceProfile.model_validate(
        {
            "id": profile_id,
            "name": f"This machine ({platform.node() or 'host'})",
            "source": "probed by edgeport from /proc/cpuinfo and psutil",
            "cpu": CpuSpec.model_validate(
                {
                    "arch": arch,
                    "cores": available_cores(),
                    "name": cpu_model_name(cpuinfo),
                    "features": features,
                }
            ),
            "memory_mb": total_memory_mb(),
            "runtimes": runtimes,
        }
    )
