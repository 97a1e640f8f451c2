"""Probing this machine: CPU flags, memory, runtimes and the devices they report."""

from __future__ import annotations

import importlib.util

import pytest

from edgeport import host
from edgeport.backends.onnxruntime import OnnxRuntimeBackend
from edgeport.backends.openvino import OpenVinoBackend
from edgeport.catalog import load_catalog

TARGETS = load_catalog().targets

X86_CPUINFO = """\
processor	: 0
model name	: Intel(R) Core(TM) i7-1165G7 @ 2.80GHz
flags		: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni sha_ni
"""
ARM_CPUINFO = """\
processor	: 0
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16
CPU part	: 0xd0b
"""
M2_SYSCTL = """\
hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_SME: 0
hw.optional.neon: 1
machdep.cpu.brand_string: Apple M2
"""
INTEL_MAC_SYSCTL = """\
hw.optional.avx2_0: 1
machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz
machdep.cpu.features: FPU VME SSE4.2 AVX1.0 F16C
machdep.cpu.leaf7_features: AVX2 BMI2
"""


def test_linux_x86_flags_become_edgeport_features() -> None:
    features = host.features_from_cpuinfo(X86_CPUINFO)
    assert features == sorted(
        ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]
    )
    assert host.cpu_model_name(X86_CPUINFO) == "Intel(R) Core(TM) i7-1165G7 @ 2.80GHz"


def test_linux_arm_flags_use_the_arm_spellings() -> None:
    assert host.features_from_cpuinfo(ARM_CPUINFO) == ["bf16", "dotprod", "fp16", "i8mm", "neon"]


def test_macos_sysctl_flags() -> None:
    assert host.features_from_sysctl(M2_SYSCTL) == ["bf16", "dotprod", "fp16", "i8mm", "neon"]
    assert host.sysctl_cpu_name(M2_SYSCTL) == "Apple M2"
    assert host.features_from_sysctl(INTEL_MAC_SYSCTL) == ["avx", "avx2", "f16c", "sse4_2"]


def test_devices_keep_known_ones_cpu_first() -> None:
    reported = [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "AzureExecutionProvider",  # not something a bundle can use
        "CPUExecutionProvider",
    ]
    assert host.order_devices(reported, TARGETS["onnxruntime"]) == [
        "CPUExecutionProvider",
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    ]


def test_openvino_device_instances_collapse_to_their_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The seam is each backend's host_devices, reached through the target's `backend`.
    monkeypatch.setattr(
        OpenVinoBackend, "host_devices", staticmethod(lambda: ["GPU", "GPU", "NPU", "CPU"])
    )
    monkeypatch.setattr(
        OnnxRuntimeBackend, "host_devices", staticmethod(lambda: ["CPUExecutionProvider"])
    )
    monkeypatch.setattr(host, "_distribution_installed", lambda name: True)
    runtimes = {r.target: r.devices for r in host.installed_runtimes(TARGETS)}
    assert runtimes["openvino"] == ["CPU", "GPU", "NPU"]


def test_a_broken_runtime_falls_back_to_its_cpu_device(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError("driver missing")

    monkeypatch.setattr(OnnxRuntimeBackend, "host_devices", staticmethod(broken))
    runtimes = {r.target: r.devices for r in host.installed_runtimes(TARGETS)}
    assert runtimes["onnxruntime"] == ["CPUExecutionProvider"]


def test_probed_host_profile_describes_this_machine() -> None:
    profile = host.probe_host_profile(TARGETS)
    assert profile.id == "host"
    assert profile.cpu.cores >= 1 and profile.memory_mb > 0
    onnxruntime = profile.runtime("onnxruntime")
    assert onnxruntime is not None and onnxruntime.devices[0] == "CPUExecutionProvider"
    # A runtime whose module is not named as its distribution is found too.
    if importlib.util.find_spec("llama_cpp") is not None:
        llama_cpp = profile.runtime("llama.cpp")
        assert llama_cpp is not None and llama_cpp.devices[0] == "CPU"
    if profile.cpu.arch == "arm64":
        assert "neon" in profile.cpu.features
