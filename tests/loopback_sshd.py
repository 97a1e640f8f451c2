"""A real OpenSSH server on 127.0.0.1 standing in for a device (test_device, test_calibrate).

A throw-away `sshd` (own host key, own authorised key, listening on 127.0.0.1 on a free
port, configured and logged in a temporary folder); the client gets every option with
`--ssh-option` (identity, pinned known_hosts, TMPDIR for the device's temporary folders),
so ~/.ssh is never used or written. The device's Python is this venv's. A module declares
its own fixture over `serve`:

    @pytest.fixture(scope="module")
    def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
        yield from serve(tmp_path_factory)

Skipped, with the install command, when sshd is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeport.runners import device_agent

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; the ssh service creates it
INSTALL = "apt-get install openssh-server"


@dataclass(frozen=True)
class Device:
    target: str
    options: tuple[str, ...]
    tmpdir: Path
    root: Path
    python: str = sys.executable

    def args(self, *extra_options: str, python: str | None = None) -> list[str]:
        options = [*extra_options, *self.options]
        return [
            "--on",
            self.target,
            "--python",
            python or self.python,
            *(arg for option in options for arg in ("--ssh-option", option)),
        ]

    def leftovers(self) -> list[str]:
        return sorted(
            p.name for p in self.tmpdir.iterdir() if p.name.startswith(device_agent.TEMP_PREFIX)
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeport-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """Start a throw-away sshd for a module-scoped `sshd` fixture; stop it after."""
    if not Path(SSHD).is_file():
        pytest.skip(f"OpenSSH's sshd is missing: {INSTALL}")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client is missing: apt-get install openssh-client")
    if not PRIVSEP_DIR.is_dir():
        if os.geteuid() != 0:
            pytest.skip(f"sshd needs {PRIVSEP_DIR} (created by root or the ssh service)")
        # Left in place afterwards, as the ssh service leaves it: another test process's
        # sshd may be using it (its privilege-separated children chroot there).
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    root = tmp_path_factory.mktemp("sshd")
    tmpdir = root / "device-tmp"
    tmpdir.mkdir()
    _keygen(root / "host_key")
    _keygen(root / "user_key")
    _keygen(root / "stranger_key")  # a key the server does not know
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    port = free_port()
    (root / "sshd_config").write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {root / 'host_key'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"PidFile {root / 'sshd.pid'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AcceptEnv TMPDIR",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    host_key = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    log = (root / "sshd.log").open("wb")
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"sshd exited: {(root / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("sshd did not listen within 15 s")
                time.sleep(0.1)
        yield Device(
            target=f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
            options=(
                f"IdentityFile={root / 'user_key'}",
                "IdentitiesOnly=yes",
                f"UserKnownHostsFile={root / 'known_hosts'}",
                "GlobalKnownHostsFile=/dev/null",
                "StrictHostKeyChecking=yes",
                "ConnectTimeout=10",
                f"SetEnv=TMPDIR={tmpdir}",
            ),
            tmpdir=tmpdir,
            root=root,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
