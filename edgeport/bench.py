"""Measure latency and peak memory of a candidate on this host, the same way for all.

Each measurement runs in a child process of its own: peak memory is then the session's
own (not whatever the PyTorch reference left behind), and a kernel that crashes takes
down the child, not the conversion. The children are forked from one warm server
process (multiprocessing's forkserver) that has imported numpy and the runtimes once,
so a measurement starts in tens of milliseconds instead of the seconds a fresh Python
spends importing them, without giving up the isolation. Warm-up runs, then a fixed
number of timed runs; the median is reported.
"""

from __future__ import annotations

import contextlib
import json
import os
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

WARMUP_RUNS = 2
TIMED_RUNS = 15
# Timed runs stop early once this many ran and they took this long: a median of 5 runs of
# a slow model is as steady as one of 15, and confirmation rounds pair it with the baseline.
MIN_TIMED_RUNS = 5
TIME_BOX_S = 1.5
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
        argv = [
            str(artifact.directory),
            artifact.model_file,
            target.backend,  # the child loads the backend class the target names
            device,
            str(threads),
            str(feeds_path),
            str(runs),
            str(new_tokens),
        ]
        if _forkserver_available():
            result = _measure_forked(argv, Path(tmp) / "child.log")
        else:
            result = _measure_subprocess(argv)
    return Measurement(
        tokens_per_s=result.get("tokens_per_s"),
        time_to_first_token_ms=result.get("time_to_first_token_ms"),
        latency_ms=result["latency_ms"],
        latency_p90_ms=result["latency_p90_ms"],
        runs=int(result.get("runs", runs)),
        batch_size=int(next(iter(feeds.values())).shape[0]),
        threads=threads,
        peak_memory_mb=result["peak_memory_mb"],
        model_bytes=artifact.model_bytes,
    )


# Modules the measuring children need, imported once by the fork server. A runtime that is
# not installed is skipped there (the forkserver ignores ImportError).
# llama.cpp is left out: its library sets up its backends when loaded, which is not for a
# process that forks.
_PRELOAD = ["numpy", "psutil", "onnxruntime", "openvino", "edgeport.backends"]


def _forkserver_available() -> bool:
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods()


def _failure(code: object, log_path: Path | None, stderr: str = "") -> EdgeportError:
    text = stderr
    if log_path is not None and log_path.is_file():
        text = log_path.read_text(encoding="utf-8", errors="replace")
    tail = (text.strip().splitlines() or ["(no output)"])[-1]
    return EdgeportError(f"latency measurement failed (exit {code}): {tail}")


def _measure_forked(argv: list[str], log_path: Path) -> dict[str, Any]:
    """One measurement in a child forked from the warm server; its output goes to a log
    (stdout belongs to `--json`), whose last line explains a failure."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # takes effect when the server first starts
    receiver, sender = context.Pipe(duplex=False)
    # The environment as it is now (ONEDNN_MAX_CPU_ISA, thread settings), not as it was
    # when the server started: runtimes read it when they load, in the child.
    environment = dict(os.environ)
    child = context.Process(target=_forked_child, args=(argv, str(log_path), environment, sender))
    child.start()
    sender.close()
    try:
        if not receiver.poll(MEASURE_TIMEOUT_S):
            raise EdgeportError(f"latency measurement timed out after {MEASURE_TIMEOUT_S}s")
        result: dict[str, Any] = receiver.recv()
    except EOFError:  # the child died before answering (a crashing kernel, OOM)
        child.join(10)
        raise _failure(child.exitcode, log_path) from None
    finally:
        if child.is_alive():
            child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
        receiver.close()
    if "error" in result:
        raise EdgeportError(f"latency measurement failed: {result['error']}")
    return result


def _forked_child(argv: list[str], log_path: str, environment: dict[str, str], sender: Any) -> None:
    os.environ.clear()
    os.environ.update(environment)
    # stdout and stderr go to the log: a runtime's warnings must not reach `--json`.
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _reset_peak_rss()  # the fork server's peak is not this measurement's
    try:
        result = _run_measurement(argv)
    except Exception as exc:  # reported to the parent as one line
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sender.send(result)
    sender.close()


def _measure_subprocess(argv: list[str]) -> dict[str, Any]:
    """A fresh interpreter per measurement, where fork is not available (Windows)."""
    command = [sys.executable, "-m", "edgeport.bench", *argv]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EdgeportError(f"latency measurement timed out after {MEASURE_TIMEOUT_S}s") from exc
    if completed.returncode != 0:
        raise _failure(completed.returncode, None, completed.stderr)
    parsed: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return parsed


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets this process's peak resident size (VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


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
    print(json.dumps(_run_measurement(argv)))


def _run_measurement(argv: list[str]) -> dict[str, Any]:
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
        return _generation(session, feeds["input_ids"], int(new_tokens), int(runs), baseline_mb)
    for _ in range(WARMUP_RUNS):
        session.run(feeds)
    timings: list[float] = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        session.run(feeds)
        timings.append((time.perf_counter() - start) * 1000)
        if len(timings) >= MIN_TIMED_RUNS and sum(timings) > TIME_BOX_S * 1000:
            break
    peak_mb = _peak_rss_mb()
    return {
        "runs": len(timings),
        "latency_ms": float(np.median(timings)),
        "latency_p90_ms": float(np.percentile(timings, 90)),
        "peak_memory_mb": max(0.0, peak_mb - baseline_mb),
    }


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
