"""`edgeport verify BUNDLE --on ssh://[user@]host[:port]`: the bundle's own checks, on the device.

The system OpenSSH client does the talking, so `~/.ssh/config`, agents, jump hosts and
known_hosts work as for `ssh` itself; edgeport adds `BatchMode=yes` (never a prompt in
CI), a connect timeout and keep-alives, after the user's own `-o` options (ssh keeps the
first value it reads, so the user's win). The ssh command is an argv list, never a local
shell; the host is validated (no option injection) and the remote command is quoted.

Two connections, each running edgeport/runners/device_agent.py with the device's Python
(sent compressed in the command line; stdin stays free for the bundle):
1. `probe`: the device's facts (CPU model and ISA flags, cores, RAM, OS, Python, the
   installed numpy and runtime versions). Refused here, before anything is sent: no
   usable Python (4), numpy or the bundle's runtime missing (4, naming what to
   `pip install`), another CPU architecture or an ISA feature of the bundle's profile
   missing (5, naming the features).
2. `run`: the bundle, packed deterministically (`archive.pack`, which first checks it
   against its manifest), streams on stdin into a fresh temporary folder on the device;
   its size and sha256 are compared there before it is unpacked (a changed byte on the
   way: exit 3, nothing runs). The bundle's own verify.py --json runs in a child process
   whose peak resident memory is measured; the folder is removed in every case.

The result is a **device run**: the device's facts, golden-output pass or fail, latency
median and p90 over the bundle's bench input, peak memory, the exact command. It is
kept as `device-runs/<host>-<YYYYmmddTHHMMSSZ>.json` inside the bundle folder (outside
the manifest, the content hash and archives), or, for an archive, in a
`<archive name less .tar.gz>.device-runs/` folder beside it. Connection failures are
DeviceUnreachableError (exit 6).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeport.errors import (
    BadInputError,
    DeviceUnreachableError,
    DoesNotFitError,
    EdgeportError,
    UnsupportedError,
    VerificationError,
)
from edgeport.runners.ondevice import DEVICE_RUNS

SCHEME = "ssh://"
DEFAULT_PYTHON = "python3"
MIN_PYTHON = (3, 10)  # verify.py's own floor
DEVICE_RUNS_SUFFIX = f".{DEVICE_RUNS}"
ARCHIVE_SUFFIX = ".tar.gz"
RUN_FORMAT = 1
CONNECT_TIMEOUT_S = 20
PROBE_TIMEOUT_S = 120
RUN_TIMEOUT_S = 3600
# Appended after the user's -o options: ssh keeps the first value of each option.
SSH_DEFAULTS = (
    "BatchMode=yes",
    f"ConnectTimeout={CONNECT_TIMEOUT_S}",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=4",
)
# The device modules a bundle needs besides its runtime.
BASE_MODULES = ("numpy",)
_OLD_PYTHON = "edgeport-old-python"
_MAX_RUN_FILE_BYTES = 1024 * 1024
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SAFE_LABEL = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_FIELD = 253


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{SCHEME}{user}{host}{port}"


def _bad_target(text: str, problem: str) -> BadInputError:
    from edgeport.catalog import echo

    return BadInputError(f"device {echo(text)}: {problem} (expected ssh://[user@]host[:port])")


def parse_target(text: str) -> SshTarget:
    """`ssh://[user@]host[:port]` (IPv6 in brackets); refuses anything ssh could read as an
    option or that is not a plain host name, alias or address."""
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise _bad_target(str(text), "not an ssh:// address")
    rest = text[len(SCHEME) :].removesuffix("/")
    if not rest or len(rest) > _MAX_FIELD or any(c in rest for c in "/?#\\ \t\r\n\0"):
        raise _bad_target(text, "a host, optionally a user and a port, and nothing else")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not _USER.fullmatch(user):
            raise _bad_target(text, "the user name must be letters, digits, '.', '_' or '-'")
    port_text = ""
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(host) or (after and not after.startswith(":")):
            raise _bad_target(text, "an IPv6 address in brackets: [address]:port")
        port_text = after[1:] if after else ""
        if after and not port_text:
            raise _bad_target(text, "empty port")
    else:
        host, colon, port_text = rest.partition(":")
        if ":" in port_text:
            raise _bad_target(text, "IPv6 addresses go in brackets")
        if colon and not port_text:
            raise _bad_target(text, "empty port")
        if not _HOST_NAME.fullmatch(host):
            raise _bad_target(
                text,
                "the host must be a name or address (letters, digits, '.', '_', '-'), "
                "not starting with '-' or '.'",
            )
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad_target(text, f"port {port_text[:10]!r} is not a number from 1 to 65535")
        port = int(port_text)
    return SshTarget(host=host, user=user, port=port)


def ssh_executable() -> str:
    path = shutil.which("ssh")
    if path is None:
        raise UnsupportedError(
            "the OpenSSH client (ssh) is not installed here: apt-get install openssh-client"
        )
    return path


def ssh_argv(
    target: SshTarget, remote_command: str, options: Sequence[str] = (), ssh: str = "ssh"
) -> list[str]:
    """The ssh command line as a list (no local shell); `remote_command` is already quoted."""
    argv = [ssh, "-T"]
    for option in [*options, *SSH_DEFAULTS]:
        if not option or "\n" in option or "\0" in option:
            raise BadInputError(f"ssh option {option!r}: expected one line, KEY=VALUE")
        argv += ["-o", option]
    if target.user:
        argv += ["-l", target.user]
    if target.port is not None:
        argv += ["-p", str(target.port)]
    return [*argv, "--", target.host, remote_command]


def agent_command(python: str, params: Mapping[str, Any]) -> str:
    """The remote shell command: the device's Python runs device_agent.py (compressed into
    the command line) with `params`, after checking its own version."""
    from edgeport.runners import device_agent

    source = Path(device_agent.__file__).read_text(encoding="utf-8")
    source += f"\nraise SystemExit(main(__import__('json').loads({json.dumps(params)!r})))\n"
    blob = base64.b64encode(zlib.compress(source.encode("utf-8"), 9)).decode("ascii")
    boot = (
        "import sys,zlib,base64;"
        f'exec(compile(zlib.decompress(base64.b64decode("{blob}")),"edgeport-device","exec"))'
        f" if sys.version_info>={MIN_PYTHON!r} else "
        f'print("{_OLD_PYTHON}",sys.version.split()[0])'
    )
    return f"{shlex.quote(python)} -c {shlex.quote(boot)}"


def _ssh_problem(stderr: str) -> str:
    """ssh's own last word, without the "Permanently added" notice."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("Warning: Permanently added")
    ]
    from edgeport.catalog import shorten

    return shorten(lines[-1], 300) if lines else "no message"


def _call_agent(
    target: SshTarget,
    python: str,
    params: Mapping[str, Any],
    *,
    options: Sequence[str],
    stdin: Path | None,
    timeout_s: float,
) -> tuple[dict[str, Any], list[str]]:
    """Run the agent on the device; its JSON report and the ssh argv (less the command)."""
    argv = ssh_argv(target, agent_command(python, params), options, ssh_executable())
    try:
        if stdin is None:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        else:
            with stdin.open("rb") as source:
                done = subprocess.run(
                    argv, stdin=source, capture_output=True, timeout=timeout_s, check=False
                )
    except subprocess.TimeoutExpired as exc:
        raise DeviceUnreachableError(
            f"{target}: no answer within {timeout_s:.0f} s (ssh was stopped; the device "
            "removes its temporary folder when the connection drops)"
        ) from exc
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace")
    lines = [line for line in stdout.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if done.returncode == 255:  # ssh's own failures: connection, authentication, host key
        raise DeviceUnreachableError(f"{target}: ssh failed: {_ssh_problem(stderr)}")
    if last.startswith(_OLD_PYTHON):
        version = last.split()[-1]
        raise UnsupportedError(
            f"{target}: {python} is Python {version}; verify.py needs Python "
            f"{'.'.join(map(str, MIN_PYTHON))} or newer: install it, or pass --python PATH"
        )
    if done.returncode in (126, 127) and not last:
        raise UnsupportedError(
            f"{target}: no Python at {python!r} ({_ssh_problem(stderr)}): install python3 "
            f"({'.'.join(map(str, MIN_PYTHON))}+) and numpy there, or pass --python PATH"
        )
    try:
        report = json.loads(last)
    except ValueError:
        report = None
    if done.returncode != 0 or not isinstance(report, dict):
        raise EdgeportError(
            f"{target}: the device agent failed under {python!r} (exit {done.returncode}): "
            f"{_ssh_problem(stderr)}"
        )
    return report, argv[:-1]


# --------------------------------------------------------------------------- device facts


def _obj(value: object) -> dict[str, Any]:
    """A JSON object read from the device or a file, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def device_facts(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's raw facts, normalised as edgeport's profiles spell them."""
    from edgeport.host import (
        cpu_model_name,
        features_from_cpuinfo,
        features_from_sysctl,
        normalise_arch,
        sysctl_cpu_name,
    )

    machine = str(raw.get("machine") or "")
    arch = normalise_arch(machine)
    cpuinfo, sysctl = raw.get("cpuinfo"), raw.get("sysctl")
    features: list[str] | None = None
    flags = ""
    name = None
    if isinstance(cpuinfo, str) and cpuinfo:
        features, name = features_from_cpuinfo(cpuinfo), cpu_model_name(cpuinfo)
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in {"flags", "features"}:
                flags = " ".join(value.split())
            elif key.strip().lower() == "model" and name is None:
                name = value.strip() or None
    elif isinstance(sysctl, str) and sysctl:
        features, name = features_from_sysctl(sysctl), sysctl_cpu_name(sysctl)
    if features is not None and arch == "arm64" and "neon" not in features:
        features = sorted([*features, "neon"])  # every arm64 CPU has Advanced SIMD
    memory = _obj(raw.get("memory_mb"))
    total = memory.get("total")
    if total is None and isinstance(sysctl, str):
        match = re.search(r"^hw\.memsize:\s*(\d+)", sysctl, re.MULTILINE)
        total = int(match.group(1)) // (1024 * 1024) if match else None
    return {
        "hostname": raw.get("hostname"),
        "os": raw.get("os"),
        "system": raw.get("system"),
        "kernel": raw.get("release"),
        "cpu": {
            "name": name or raw.get("processor") or machine or None,
            "arch": arch,
            "machine": machine,
            "features": features,
            "flags": flags,
        },
        "cores": raw.get("cores_available") or raw.get("cores"),
        "memory_mb": {"total": total, "available": memory.get("available")},
        "python": raw.get("python"),
        "packages": raw.get("packages") or {},
    }


def check_device(
    manifest: Mapping[str, Any], device: Mapping[str, Any], target: SshTarget, python: str
) -> dict[str, Any]:
    """Refuse before sending anything: software missing (4), CPU unfit (5)."""
    runtime = str((manifest.get("runtime") or {}).get("target") or "")
    versions = _obj(manifest.get("versions"))
    packages = device["packages"]
    for module in [*BASE_MODULES, runtime]:
        if module and packages.get(module) is None:
            # The runtime at the version the bundle was validated with (its requirements.txt).
            pinned = (
                f"{module}=={versions[module]}"
                if module == runtime and versions.get(module)
                else module
            )
            raise UnsupportedError(
                f"{target}: {module} is not installed for {python}: pip install {pinned}"
                + (" (the version the bundle was validated with)" if module == runtime else "")
            )
    profile = _obj(manifest.get("profile"))
    cpu = _obj(profile.get("cpu"))
    profile_id = profile.get("id", "?")
    need_arch = cpu.get("arch")
    have = device["cpu"]
    if need_arch and have["arch"] != need_arch:
        raise DoesNotFitError(
            f"{target}: the device's CPU is {have['arch']} ({have['machine']}); the bundle "
            f"was converted for {need_arch} (profile {profile_id})"
        )
    needed = [str(feature) for feature in cpu.get("features") or []]
    if have["features"] is None:
        return {"arch": need_arch, "features": needed, "missing": None, "checked": False}
    missing = [feature for feature in needed if feature not in have["features"]]
    if missing:
        raise DoesNotFitError(
            f"{target}: the device's CPU ({have['name']}) lacks {', '.join(missing)}, which "
            f"the bundle's profile {profile_id} has; convert for this device "
            "(`edgeport profiles detect` on it writes its profile)"
        )
    return {"arch": need_arch, "features": needed, "missing": [], "checked": True}


# --------------------------------------------------------------------------- verify


def _load_manifest(bundle: Path) -> dict[str, Any]:
    from edgeport.runners.ondevice import BundleError, load_manifest

    try:
        return load_manifest(bundle)
    except BundleError as exc:
        raise BadInputError(str(exc)) from exc


def verify_on_device(
    path: Path,
    target: str | SshTarget,
    *,
    python: str = DEFAULT_PYTHON,
    runs: int = 5,
    threads: int | None = None,
    ssh_options: Sequence[str] = (),
    timeout_s: float = RUN_TIMEOUT_S,
) -> dict[str, Any]:
    """Run the bundle folder or archive at `path` on the device; the device run (not saved).

    Raises before running: BadInputError (2) for a malformed bundle or target,
    VerificationError (3) when the local bundle does not match its manifest or the bundle
    changed on the way, UnsupportedError (4) for a missing Python, numpy or runtime,
    DoesNotFitError (5) for an unfit CPU, DeviceUnreachableError (6) for SSH failures.
    A bundle that ran and failed its checks is a device run with `passed: false`.
    """
    from edgeport import __version__
    from edgeport.archive import pack, unpack

    ssh_target = target if isinstance(target, SshTarget) else parse_target(target)
    if not python or "\0" in python or "\n" in python:
        raise BadInputError(f"--python {python!r}: expected a command or path")
    if runs < 0:
        raise BadInputError(f"--runs {runs}: expected 0 or more")
    if not path.exists():
        raise BadInputError(f"bundle not found: {path}")
    ssh_executable()
    started = datetime.now(UTC).replace(microsecond=0)
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeport-device-") as tmp:
        bundle = path if path.is_dir() else unpack(path, Path(tmp) / "bundle")
        manifest = _load_manifest(bundle)
        runtime = str((manifest.get("runtime") or {}).get("target") or "")
        raw, _ = _call_agent(
            ssh_target,
            python,
            {"action": "probe", "modules": sorted({*BASE_MODULES, runtime} - {""})},
            options=ssh_options,
            stdin=None,
            timeout_s=PROBE_TIMEOUT_S,
        )
        device = device_facts(raw)
        profile_check = check_device(manifest, device, ssh_target, python)
        # Checked against its manifest first: a locally changed bundle is never sent.
        packed = pack(bundle, Path(tmp) / "upload.tar.gz")
        report, ssh = _call_agent(
            ssh_target,
            python,
            {
                "action": "run",
                "archive_bytes": packed.bytes,
                "archive_sha256": packed.sha256,
                "runs": runs,
                "threads": threads,
            },
            options=ssh_options,
            stdin=packed.path,
            timeout_s=timeout_s,
        )
    transfer = report.get("transfer") or {}
    if not transfer.get("matches"):
        raise VerificationError(
            f"{ssh_target}: the bundle changed on the way: {transfer.get('bytes')} bytes with "
            f"sha256 {str(transfer.get('sha256'))[:16]}… arrived, {packed.bytes} bytes with "
            f"sha256 {packed.sha256[:16]}… were sent; nothing ran"
        )
    if report.get("unpack_error"):
        raise EdgeportError(f"{ssh_target}: cannot unpack the bundle: {report['unpack_error']}")
    result = report.get("result") if isinstance(report.get("result"), dict) else None
    exit_code = report.get("exit_code")
    failures = [str(f) for f in (result or {}).get("failures") or []]
    if exit_code == 4:
        raise UnsupportedError(f"{ssh_target}: " + "; ".join(failures or ["runtime missing"]))
    if exit_code == 2:
        raise BadInputError(f"{ssh_target}: verify.py: " + "; ".join(failures or ["malformed"]))
    if result is None or exit_code not in (0, 3):
        tail = str(report.get("stderr_tail") or "").strip().splitlines()
        failures.append(
            f"verify.py ended with exit code {exit_code}"
            + (f": {tail[-1]}" if tail else "")
            + (" (killed: out of memory?)" if exit_code == -9 else "")
        )
    latency = (result or {}).get("latency") or {}
    reproducibility = manifest.get("reproducibility") or {}
    return {
        "format_version": RUN_FORMAT,
        "kind": "edgeport-device-run",
        "target": str(ssh_target),
        "host": ssh_target.host,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.perf_counter() - clock, 3),
        "edgeport_version": __version__,
        "bundle": {
            "path": str(path),
            "model": (manifest.get("model") or {}).get("id"),
            "profile": (manifest.get("profile") or {}).get("id"),
            "recipe": (manifest.get("recipe") or {}).get("id"),
            "target": runtime,
            "content_sha256": reproducibility.get("content_sha256"),
            "archive_sha256": packed.sha256,
        },
        "device": device,
        "profile_check": profile_check,
        "passed": exit_code == 0 and bool(result and result.get("passed")) and not failures,
        "exit_code": exit_code,
        "runtime": (result or {}).get("runtime"),
        "golden": (result or {}).get("golden"),
        "latency": {
            "runs": latency.get("runs"),
            "tokens": latency.get("tokens"),
            "median_ms": latency.get("median_ms"),
            "p90_ms": latency.get("p90_ms"),
        }
        if latency
        else None,
        "peak_memory_mb": report.get("peak_memory_mb"),
        "wall_s": report.get("wall_s"),
        "failures": failures,
        "command": report.get("command"),
        "python": python,
        "ssh": shlex.join(ssh),
    }


# --------------------------------------------------------------------------- kept runs


def device_runs_folder(path: Path) -> Path:
    """`BUNDLE/device-runs`, or `NAME.device-runs` beside an archive NAME.tar.gz."""
    if path.is_dir():
        return path / DEVICE_RUNS
    name = path.name.removesuffix(ARCHIVE_SUFFIX) if path.name.endswith(ARCHIVE_SUFFIX) else ""
    return path.with_name((name or path.stem) + DEVICE_RUNS_SUFFIX)


def save_device_run(run: Mapping[str, Any], path: Path) -> Path:
    """Write the device run as `<host>-<YYYYmmddTHHMMSSZ>.json` (whole or not at all)."""
    folder = device_runs_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    started = datetime.strptime(str(run["started_at"]), "%Y-%m-%dT%H:%M:%SZ")
    label = _SAFE_LABEL.sub("_", str(run["host"]))
    stem = f"{label}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    fd, partial = tempfile.mkstemp(prefix=f".{stem}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(run, indent=2, default=str) + "\n")
        Path(partial).chmod(0o644 & ~_umask())
        for number in range(1, 1000):
            target = folder / (f"{stem}.json" if number == 1 else f"{stem}-{number}.json")
            try:
                os.link(partial, target)  # never replaces another run of the same second
            except FileExistsError:
                continue
            return target
        raise EdgeportError(f"{folder}: too many device runs named {stem}")
    finally:
        Path(partial).unlink(missing_ok=True)


def _umask() -> int:
    from edgeport.bundle import process_umask

    return process_umask()


def run_summary(run: Mapping[str, Any], file: Path | str | None = None) -> dict[str, Any]:
    """The few numbers `edgeport verify` prints and index.json keeps."""
    device = _obj(run.get("device"))
    cpu = _obj(device.get("cpu"))
    latency = _obj(run.get("latency"))
    bundle = _obj(run.get("bundle"))
    return {
        "file": str(file) if file is not None else None,
        "target": run.get("target"),
        "started_at": run.get("started_at"),
        "passed": run.get("passed") is True,
        "cpu": cpu.get("name"),
        "arch": cpu.get("arch"),
        "latency_median_ms": latency.get("median_ms"),
        "latency_p90_ms": latency.get("p90_ms"),
        "peak_memory_mb": run.get("peak_memory_mb"),
        "content_sha256": bundle.get("content_sha256"),
        "failures": run.get("failures") or [],
    }


def kept_device_runs(path: Path, content_sha256: str | None = None) -> list[dict[str, Any]]:
    """Summaries of the device runs kept for the bundle folder or archive at `path`, oldest
    first; `current` says whether each ran this content (None: unknown)."""
    folder = device_runs_folder(path)
    if not folder.is_dir() or folder.is_symlink():
        return []
    summaries = []
    for file in sorted(folder.glob("*.json")):
        try:
            if not file.is_file() or file.stat().st_size > _MAX_RUN_FILE_BYTES:
                raise ValueError("not a device run file")
            run = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(run, dict) or run.get("kind") != "edgeport-device-run":
                raise ValueError("not a device run")
        except (OSError, ValueError) as exc:
            summaries.append({"file": str(file), "error": f"unreadable: {exc}"})
            continue
        summary = run_summary(run, file)
        summary["current"] = (
            None if content_sha256 is None else summary["content_sha256"] == content_sha256
        )
        summaries.append(summary)
    return summaries


def _ms(value: object) -> str:
    return f"{value:.2f} ms" if isinstance(value, int | float) else "n/a"


def summary_line(run: Mapping[str, Any]) -> str:
    """One line: device, pass/fail, metrics, latency median/p90, peak memory."""
    device = run["device"]
    cpu = device["cpu"]
    memory = (device.get("memory_mb") or {}).get("total")
    facts = [str(cpu.get("name") or "unknown CPU"), str(cpu.get("arch"))]
    if device.get("cores"):
        facts.append(f"{device['cores']} cores")
    if isinstance(memory, int):
        facts.append(f"{memory / 1024:.1f} GiB")
    if device.get("os"):
        facts.append(str(device["os"]))
    runtime = run.get("runtime") or {}
    if runtime.get("target"):
        facts.append(f"{runtime['target']} {runtime.get('version')}")
    parts = [f"{'PASS' if run['passed'] else 'FAIL'} on {run['target']} ({', '.join(facts)})"]
    for metric in (run.get("golden") or {}).get("metrics") or []:
        threshold = metric.get("threshold")
        parts.append(
            f"{metric['name']}={metric['value']:.6f}"
            + (f" (>= {threshold})" if threshold is not None else "")
        )
    latency = run.get("latency") or {}
    if latency:
        parts.append(
            f"latency median {_ms(latency.get('median_ms'))}, p90 {_ms(latency.get('p90_ms'))}"
        )
    if run.get("peak_memory_mb") is not None:
        parts.append(f"peak memory {run['peak_memory_mb']:.0f} MB")
    if not run["passed"]:
        parts += [str(failure) for failure in run.get("failures") or []]
    return "; ".join(parts)


def kept_summary_line(summary: Mapping[str, Any]) -> str:
    """One line per kept device run, for `edgeport verify` (without --on)."""
    if "error" in summary:
        return f"device run {summary['file']}: {summary['error']}"
    state = "PASS" if summary["passed"] else "FAIL"
    stale = " (another build of the bundle)" if summary.get("current") is False else ""
    peak = summary.get("peak_memory_mb")
    return (
        f"device run {summary['started_at']} {state} on {summary['target']} "
        f"({summary.get('cpu') or 'unknown CPU'}): median {_ms(summary['latency_median_ms'])}, "
        f"p90 {_ms(summary['latency_p90_ms'])}"
        + (f", peak {peak:.0f} MB" if isinstance(peak, int | float) else "")
        + stale
    )
