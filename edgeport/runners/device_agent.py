"""What `edgeport verify --on ssh://...` runs on the device, with the device's own Python.

Not a bundle file and not a script: edgeport/device.py sends this module's source over SSH
(compressed into the command line, so that the bundle archive can stream on stdin), with
one call of `main(PARAMS)` appended. Standard library only (the device has Python, numpy
and the runtime; never edgeport), Python 3.10 or newer (as verify.py; the bootstrap checks
the version before this code is compiled). It prints exactly one JSON object, on the last
line of stdout, and exits 0 unless it crashed.

Two actions:
- `probe`: the device's facts: OS, CPU model and ISA flags (/proc/cpuinfo lines, or
  sysctl on macOS), cores, memory, the Python in use, and the installed versions of the
  modules asked for (numpy and the runtimes). edgeport compares them with the bundle's
  profile before it sends anything.
- `run`: read the bundle archive from stdin into a fresh temporary folder, check its size
  and sha256 against what edgeport sent (a changed byte on the way is reported, nothing
  runs), unpack it, run the bundle's own `verify.py --json` in a child process and report
  its result, exit code, wall time and peak resident memory (getrusage of the child).
  With `argv`, the child runs that script of the archive instead (`edgeport profiles
  calibrate` sends reference graphs and time_graphs.py); it prints one JSON object too.
  The temporary folder is removed in every case, also on SIGTERM or SIGHUP (the SSH
  connection dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

TEMP_PREFIX = "edgeport-device-"
ARCHIVE_NAME = "bundle.tar.gz"
BUNDLE_DIR = "bundle"
_CHUNK = 1 << 20
# /proc/cpuinfo keys worth sending (first occurrence of each): name and ISA flags.
_CPUINFO_KEYS = frozenset(
    {"model name", "flags", "features", "hardware", "cpu model", "model", "cpu implementer"}
)
_TAIL = 2000


def _cpuinfo() -> str | None:
    """The first line of each interesting /proc/cpuinfo key (one core's worth, not 128)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    seen: dict[str, str] = {}
    for line in text.splitlines():
        key = line.partition(":")[0].strip().lower()
        if key in _CPUINFO_KEYS and key not in seen:
            seen[key] = line.strip()
    return "\n".join(seen.values())


def _sysctl() -> str | None:
    if sys.platform != "darwin":
        return None
    try:
        done = subprocess.run(
            ["sysctl", "hw.optional", "machdep.cpu", "hw.memsize"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _meminfo_mb() -> dict[str, int | None]:
    values: dict[str, int | None] = {"total": None, "available": None}
    try:
        lines = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return values
    for line in lines:
        key, _, rest = line.partition(":")
        field = {"MemTotal": "total", "MemAvailable": "available"}.get(key)
        if field and rest.split():
            values[field] = int(rest.split()[0]) // 1024  # kB
    return values


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _versions(modules: list[str]) -> dict[str, str | None]:
    """Installed version of each module (None: not importable by this Python)."""
    import importlib.metadata
    import importlib.util

    try:
        owners = importlib.metadata.packages_distributions()
    except Exception:  # a broken distribution's metadata must not hide the others
        owners = {}
    found: dict[str, str | None] = {}
    for module in modules:
        try:
            present = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            present = False
        version = None
        if present:
            for dist in [*owners.get(module, []), module]:
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        found[module] = (version or "unknown") if present else None
    return found


def probe(params: dict[str, Any]) -> dict[str, Any]:
    try:
        available: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = None
    return {
        "hostname": platform.node(),
        "system": platform.system(),
        "release": platform.release(),
        "os": _os_name(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpuinfo": _cpuinfo(),
        "sysctl": _sysctl(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "memory_mb": _meminfo_mb(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": _versions(list(params.get("modules", []))),
        "tmpdir": tempfile.gettempdir(),
    }


def _receive(target: Path, size: int) -> tuple[int, str]:
    """Copy at most `size` bytes of stdin into `target`; bytes received and their sha256."""
    digest = hashlib.sha256()
    received = 0
    with target.open("wb") as handle:
        while received < size:
            chunk = sys.stdin.buffer.read(min(_CHUNK, size - received))
            if not chunk:
                break
            handle.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    return received, digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Unpack the archive edgeport packed (its sha256 was checked): plain files and folders
    with relative names only, whatever this Python's tarfile filters offer."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if (
                not (member.isfile() or member.isdir())
                or member.name.startswith("/")
                or (".." in parts)
            ):
                raise ValueError(f"unexpected archive entry {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python 3.10/3.11 before the filters were backported
            tar.extractall(dest, members=members)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _json_or_none(text: str) -> Any:
    """verify.py --json prints one indented object on stdout: parse all of it."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def run(params: dict[str, Any]) -> dict[str, Any]:
    size = int(params["archive_bytes"])
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    report: dict[str, Any] = {"tmpdir": str(tmp)}
    try:
        archive = tmp / ARCHIVE_NAME
        received, digest = _receive(archive, size)
        report["transfer"] = {"bytes": received, "sha256": digest}
        if received != size or digest != params["archive_sha256"]:
            report["transfer"]["matches"] = False
            return report
        report["transfer"]["matches"] = True
        bundle = tmp / BUNDLE_DIR
        try:
            _extract(archive, bundle)
        except (OSError, ValueError, tarfile.TarError) as exc:
            report["unpack_error"] = f"{type(exc).__name__}: {exc}"
            return report
        archive.unlink()
        if params.get("argv"):  # another script of the archive (profiles calibrate)
            command = [sys.executable, *(str(arg) for arg in params["argv"])]
        else:
            command = [sys.executable, "verify.py", "--json", "--runs", str(int(params["runs"]))]
            if params.get("threads"):
                command += ["--threads", str(int(params["threads"]))]
        report["command"] = f"cd {shlex.quote(str(bundle))} && {shlex.join(command)}"
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=bundle, stdin=subprocess.DEVNULL, capture_output=True, check=False
        )
        report["wall_s"] = round(time.perf_counter() - start, 3)
        report["peak_memory_mb"] = _peak_rss_mb()
        report["exit_code"] = done.returncode
        report["result"] = _json_or_none(done.stdout.decode("utf-8", "replace"))
        report["stderr_tail"] = done.stderr.decode("utf-8", "replace")[-_TAIL:]
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _leave(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(params: dict[str, Any]) -> int:
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _leave)
    action = params.get("action")
    result = probe(params) if action == "probe" else run(params) if action == "run" else None
    if result is None:
        result = {"error": f"unknown action {action!r}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
