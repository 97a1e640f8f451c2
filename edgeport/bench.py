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
from typing import TYPE_CHECKING, Any

from edgeport.errors import EdgeportError
from edgeport.schemas import Measurement

if TYPE_CHECKING:
    from edgeport.backends import Artifact, Feeds
    from edgeport.schemas import Target

WARMUP_RUNS = 3
TIMED_RUNS = 15
GENERATION_RUNS = 5
MEASURE_TIMEOUT_S = 900


def measure(
    artifact: Artifact,
    target: Target,
    device: str,
    threads: int,
    feeds: Feeds,
    runs: int = TIMED_RUNS,
    new_tokens: int = 0,
) -> Measurement:
    """Latency of one batch of `feeds`; with `new_tokens`, greedy decoding from
    feeds["input_ids"] through the KV cache (latency = median ms per decoded token)."""
    import numpy as np

    if new_tokens > 0:
        runs = min(runs, GENERATION_RUNS)

    with tempfile.TemporaryDirectory(prefix="edgeport-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)  # type: ignore[arg-type]
        command = [
            sys.executable,
            "-m",
            "edgeport.bench",
            str(artifact.directory),
            artifact.model_file,
            target.backend,  # the child loads the backend class the target names
            device,
            str(threads),
            str(feeds_path),
            str(runs),
            str(new_tokens),
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
        tokens_per_s=result.get("tokens_per_s"),
        time_to_first_token_ms=result.get("time_to_first_token_ms"),
        latency_ms=result["latency_ms"],
        latency_p90_ms=result["latency_p90_ms"],
        runs=runs,
        batch_size=int(next(iter(feeds.values())).shape[0]),
        threads=threads,
        peak_memory_mb=result["peak_memory_mb"],
        model_bytes=artifact.model_bytes,
    )


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ru_maxrss across fork + exec, so a
    child of the (large) converting process would report the parent's peak; VmHWM
    belongs to the child's own address space."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(argv: list[str]) -> None:
    import time

    import numpy as np
    import psutil

    from edgeport.backends import Artifact, backend_from_spec

    directory, model_file, backend_spec, device, threads, feeds_path, runs, new_tokens = argv
    backend = backend_from_spec(backend_spec)
    with np.load(feeds_path) as data:
        feeds = {name: data[name] for name in data.files}
    baseline_mb = psutil.Process().memory_info().rss / 2**20
    artifact = Artifact(Path(directory), model_file, (model_file,), tuple(feeds), ())
    session = backend.load(artifact, device, int(threads))
    if int(new_tokens) > 0:
        result = _generation(session, feeds["input_ids"], int(new_tokens), int(runs), baseline_mb)
        print(json.dumps(result))
        return
    for _ in range(WARMUP_RUNS):
        session.run(feeds)
    timings = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        session.run(feeds)
        timings.append((time.perf_counter() - start) * 1000)
    peak_mb = _peak_rss_mb()
    print(
        json.dumps(
            {
                "latency_ms": float(np.median(timings)),
                "latency_p90_ms": float(np.percentile(timings, 90)),
                "peak_memory_mb": max(0.0, peak_mb - baseline_mb),
            }
        )
    )


def _generation(
    session: Any, prompt: Any, new_tokens: int, runs: int, baseline_mb: float
) -> dict[str, float]:
    """Time to first token (prompt + one token) and decode speed (the tokens after it)."""
    import time

    import numpy as np

    ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
    session.generate(ids, 2)  # warm-up
    first, per_token = [], []
    for _ in range(runs):
        start = time.perf_counter()
        session.generate(ids, 1)
        first.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        session.generate(ids, new_tokens)
        total = (time.perf_counter() - start) * 1000
        per_token.append(max(total - first[-1], 1e-6) / max(new_tokens - 1, 1))
    peak_mb = _peak_rss_mb()
    median = float(np.median(per_token))
    return {
        "latency_ms": median,
        "latency_p90_ms": float(np.percentile(per_token, 90)),
        "peak_memory_mb": max(0.0, peak_mb - baseline_mb),
        "tokens_per_s": 1000.0 / median,
        "time_to_first_token_ms": float(np.median(first)),
    }


if __name__ == "__main__":
    _child(sys.argv[1:])
