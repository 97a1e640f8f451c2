"""What two conversions of the same model share, and what legitimately differs.

`content_sha256` in the manifest's reproducibility note covers every file except the
volatile ones; compare it across conversions (and across machines with the same library
versions) to know whether two bundles are the same model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from edgeport.bundle import MANIFEST, REPORT
from edgeport.schemas import FileEntry, Reproducibility, VolatileFile

# Measured on this host at conversion time; a second conversion measures other numbers.
_TIMING_FIELDS = [
    "attempts[].duration_s",
    "attempts[].measurement.latency_ms",
    "attempts[].measurement.latency_p90_ms",
    "attempts[].measurement.peak_memory_mb",
    "attempts[].latency_ratio",
    "metrics.latency_ratio_vs_fp32",
]
VOLATILE = (
    VolatileFile(
        path=MANIFEST,
        fields=[*_TIMING_FIELDS, f"files[{REPORT}]"],
        why="latency, memory and duration measured on the build host vary run to run; "
        f"the {REPORT} entry changes with them",
    ),
    VolatileFile(path=REPORT, why="its tables print the same timings"),
)
REPRODUCIBILITY_NOTES = (
    "ONNX export (optimum, torch.onnx) was checked deterministic: converting the same model "
    "at the same commit with the same recipe and library versions twice gives the same "
    "model.onnx sha256",
    "golden.npz holds PyTorch outputs computed on the build host: bit-identical with the same "
    "host and library versions; another CPU or torch build may differ in the last bits",
    "versions, profile 'host' (probed) and validation metrics depend on the build environment, "
    "not on the run",
    "content_sha256 covers every file except the volatile ones; compare it across conversions",
)


def content_digest(entries: Iterable[FileEntry], volatile: Iterable[str]) -> str:
    skipped = set(volatile)
    lines = "".join(
        f"{e.path} {e.sha256}\n"
        for e in sorted(entries, key=lambda e: e.path)
        if e.path not in skipped
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def reproducibility(entries: list[FileEntry]) -> Reproducibility:
    volatile_paths = {v.path for v in VOLATILE}
    return Reproducibility(
        content_sha256=content_digest(entries, volatile_paths),
        stable_files=sorted(e.path for e in entries if e.path not in volatile_paths),
        volatile=list(VOLATILE),
        notes=list(REPRODUCIBILITY_NOTES),
    )
