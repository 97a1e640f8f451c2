"""Measure latency and peak memory of a candidate on this host, the same way for all.

Each measurement runs in a fresh child process: peak memory is then the session's own
(not whatever the PyTorch reference left behind), and a kernel that crashes takes down
the child, not the conversion. Warm-up runs, then a fixed number of timed runs; the
median is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeport.errors import EdgeportError
from edgeport.schemas import Measurement

if TYPE_CHECKING:
    from edgeport.backends import Artifact, Feeds

WARMUP_RUNS = 3
TIMED_RUNS = 15
MEASURE_TIMEOUT_S = 900


def measure(
    artifact: Artifact,
    target_id: str,
    device: str,
    threads: int,
    feeds: Feeds,
    runs: int = TIMED_RUNS,
) -> Measurement:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="edgeport-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)  # type: ignore[arg-type]
        command = [
            sys.executable,
            "-m",
            "edgeport.bench",
            str(artifact.directory),
            artifact.model_file,
            target_id,
            device,
            str(threads),
            str(feeds_path),
            str(runs),
        ]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise EdgeportError(
                f"latency measurement timed out after {MEASURE_TIMEOUT_S}s"
            ) from exc
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EdgeportError(f"latency measurement failed (exit {completed.returncode}): {tail}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return Measurement(
        latency_ms=result["latency_ms"],
        latency_p90_ms=result["latency_p90_ms"],
        runs=runs,
        batch_size=int(next(iter(feeds.values())).shape[0]),
        threads=threads,
        peak_memory_mb=result["peak_memory_mb"],
        model_bytes=artifact.size_bytes,
    )


def _child(argv: list[str]) -> None:
    import resource
    import time

    import numpy as np
    import psutil

    from edgeport.backends import Artifact, get_backend

    directory, model_file, target_id, device, threads, feeds_path, runs = argv
    backend = get_backend(target_id)
    with np.load(feeds_path) as data:
        feeds = {name: data[name] for name in data.files}
    baseline_mb = psutil.Process().memory_info().rss / 2**20
    artifact = Artifact(Path(directory), model_file, (model_file,), tuple(feeds), ())
    session = backend.load(artifact, device, int(threads))
    for _ in range(WARMUP_RUNS):
        session.run(feeds)
    timings = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        session.run(feeds)
        timings.append((time.perf_counter() - start) * 1000)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "latency_ms": float(np.median(timings)),
                "latency_p90_ms": float(np.percentile(timings, 90)),
                "peak_memory_mb": max(0.0, peak_mb - baseline_mb),
            }
        )
    )


if __name__ == "__main__":
    _child(sys.argv[1:])
