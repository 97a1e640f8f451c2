"""`edgeport verify --on ssh://...` against a real OpenSSH server on 127.0.0.1.

The "device" is this machine through a throw-away `sshd` (own host key, own authorised
key, listening on 127.0.0.1 on a free port, configured and logged in a temporary folder);
the client gets every option with `--ssh-option` (identity, pinned known_hosts, TMPDIR
for the device's temporary folders), so ~/.ssh is never used or written. The device's
Python is this venv's. Skipped, with the install command, when sshd is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bundle_fixtures import PROFILE, copy_bundle, read_manifest, reseal, tiny_bundle_once
from bundle_fixtures import write_manifest as write_bundle_manifest
from conftest import run_cli
from loopback_sshd import Device, free_port, serve

from edgeport import device
from edgeport.errors import BadInputError, UnsupportedError, VerificationError
from edgeport.runners import ondevice

# ISA features an x86 host may lack; the first this CPU lacks makes an unfit bundle.
RARE_FEATURES = ("amx_int8", "amx_bf16", "avx512_fp16", "avx_vnni", "avx512_vnni")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    yield from serve(tmp_path_factory)


@pytest.fixture(scope="module")
def ort_bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's tiny ONNX Runtime bundle (device runs go into it)."""
    shared = tiny_bundle_once(tiny_bert, tmp_path_factory.mktemp("bundle"))
    return copy_bundle(shared, tmp_path_factory.mktemp("ort") / "tiny-ort")


@pytest.fixture(scope="module")
def unfit_bundle(ort_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The ORT bundle whose profile names an ISA feature this CPU lacks (resealed)."""
    from edgeport.host import probe_cpu

    have = set(probe_cpu().features)
    missing = next((f for f in RARE_FEATURES if f not in have), None)
    if missing is None:
        pytest.skip(f"this CPU has every one of {RARE_FEATURES}")
    bundle = copy_bundle(ort_bundle, tmp_path_factory.mktemp("unfit") / "tiny-unfit")
    shutil.rmtree(bundle / ondevice.DEVICE_RUNS, ignore_errors=True)
    manifest = read_manifest(bundle)
    manifest["profile"]["cpu"]["features"].append(missing)
    write_bundle_manifest(bundle, reseal(manifest))
    return bundle, missing


def _device_runs(path: Path) -> list[Path]:
    folder = device.device_runs_folder(path)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _check_run(run: dict[str, Any], runtime: str, runs: int) -> None:
    assert run["passed"] is True and run["exit_code"] == 0 and run["failures"] == []
    facts = run["device"]
    assert facts["cpu"]["arch"] == "x86_64" or facts["cpu"]["arch"] == "arm64"
    assert facts["cpu"]["name"] and facts["cores"] >= 1 and facts["memory_mb"]["total"] > 0
    assert facts["os"] and facts["python"]["executable"]
    assert facts["packages"]["numpy"] and facts["packages"][runtime]
    assert run["runtime"]["target"] == runtime
    # OpenVINO's own version string adds its build: 2026.4.1-22982-... for 2026.4.1.
    assert run["runtime"]["version"].startswith(facts["packages"][runtime])
    assert run["profile_check"]["checked"] and run["profile_check"]["missing"] == []
    latency = run["latency"]
    assert latency["runs"] == runs and 0 < latency["median_ms"] <= latency["p90_ms"]
    assert run["peak_memory_mb"] > 10
    assert run["golden"]["metrics"] and all(
        m["passed"] is not False for m in run["golden"]["metrics"]
    )
    assert run["command"].endswith(f"verify.py --json --runs {runs}")
    assert " -- 127.0.0.1" in run["ssh"] and run["ssh"].startswith(shutil.which("ssh") or "ssh")


# --------------------------------------------------------------------------- no server


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssh://pi5.local", ("pi5.local", None, None)),
        ("ssh://pi@192.168.1.20:2222", ("192.168.1.20", "pi", 2222)),
        ("ssh://ci-runner_1@build.example.org/", ("build.example.org", "ci-runner_1", None)),
        ("ssh://root@[fe80::1%eth0]:22", ("fe80::1%eth0", "root", 22)),
    ],
)
def test_targets_parse(text: str, expected: tuple[str, str | None, int | None]) -> None:
    target = device.parse_target(text)
    assert (target.host, target.user, target.port) == expected
    assert device.parse_target(str(target)) == target


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pi@pi5.local", "not an ssh:// address"),
        ("ssh://-oProxyCommand=touch%20x", "not starting with '-'"),
        ("ssh://-oProxyCommand=x@host", "user name"),
        ("ssh://host:0", "port"),
        ("ssh://host:22x", "port"),
        ("ssh://host:", "empty port"),
        ("ssh://fe80::1", "brackets"),
        ("ssh://host/path", "nothing else"),
        ("ssh://host name", "nothing else"),
        ("ssh://", "nothing else"),
    ],
)
def test_bad_targets_are_one_line_exit_2(text: str, problem: str) -> None:
    with pytest.raises(BadInputError, match=problem) as caught:
        device.parse_target(text)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_ssh_command_is_an_argv_and_the_remote_side_is_quoted() -> None:
    target = device.parse_target("ssh://pi@board:2200")
    argv = device.ssh_argv(target, device.agent_command("/opt/my python", {"action": "probe"}))
    assert argv[argv.index("--") + 1 :][0] == "board"
    assert argv[argv.index("-l") : argv.index("-l") + 2] == ["-l", "pi"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2200"]
    assert argv[-1].startswith("'/opt/my python' -c '")
    # The user's options come first: ssh keeps the first value, so they override ours.
    argv = device.ssh_argv(target, "true", ["BatchMode=no"])
    assert argv.index("BatchMode=no") < argv.index("BatchMode=yes")
    with pytest.raises(BadInputError):
        device.ssh_argv(target, "true", ["Foo=bar\nProxyCommand=x"])


def test_arm_cpuinfo_is_normalised_like_profiles() -> None:
    facts = device.device_facts(
        {
            "machine": "aarch64",
            "cpuinfo": "Features\t: fp asimd evtstrm aes crc32 asimdhp asimddp i8mm\n"
            "CPU implementer\t: 0x41\nModel\t: Raspberry Pi 5 Model B Rev 1.0",
            "memory_mb": {"total": 8000, "available": 7000},
            "packages": {"numpy": "2.0"},
        }
    )
    assert facts["cpu"]["arch"] == "arm64"
    assert facts["cpu"]["features"] == ["dotprod", "fp16", "i8mm", "neon"]
    assert facts["cpu"]["name"] == "Raspberry Pi 5 Model B Rev 1.0"


def test_missing_runtime_names_the_package_and_unfit_cpu_the_features() -> None:
    manifest = {
        "runtime": {"target": "onnxruntime"},
        "versions": {"onnxruntime": "1.31.1", "numpy": "2.4.6"},
        "profile": {"id": "raspberry-pi-5", "cpu": {"arch": "arm64", "features": ["dotprod"]}},
    }
    target = device.parse_target("ssh://pi@pi5")
    facts = device.device_facts({"machine": "aarch64", "cpuinfo": "Features : asimd asimddp"})
    facts["packages"] = {"numpy": "2.4.6", "onnxruntime": None}
    with pytest.raises(UnsupportedError, match=r"pip install onnxruntime==1\.31\.1"):
        device.check_device(manifest, facts, target, "python3")
    facts["packages"] = {"numpy": None, "onnxruntime": "1.31.1"}
    with pytest.raises(UnsupportedError, match=r"pip install numpy \(|pip install numpy$"):
        device.check_device(manifest, facts, target, "python3")
    facts["packages"] = {"numpy": "2.4.6", "onnxruntime": "1.31.1"}
    assert device.check_device(manifest, facts, target, "python3")["missing"] == []
    manifest["profile"]["cpu"]["features"] = ["dotprod", "i8mm", "sve"]
    with pytest.raises(Exception, match="lacks i8mm, sve") as caught:
        device.check_device(manifest, facts, target, "python3")
    assert caught.value.exit_code == 5  # type: ignore[attr-defined]
    x86 = device.device_facts({"machine": "x86_64", "cpuinfo": "flags : avx2"})
    x86["packages"] = facts["packages"]
    with pytest.raises(Exception, match="converted for arm64"):
        device.check_device(manifest, x86, target, "python3")


def test_device_runs_are_outside_the_bundle(ort_bundle: Path, tmp_path: Path) -> None:
    """Both verifiers ignore device-runs/, archives leave it out, the manifest calls it volatile."""
    import tarfile

    from edgeport.archive import check_bundle_files, pack

    bundle = copy_bundle(ort_bundle, tmp_path / "bundle")
    (bundle / "device-runs").mkdir(exist_ok=True)
    (bundle / "device-runs" / "board-20250101T000000Z.json").write_text("{}")
    assert check_bundle_files(bundle) == []
    info = pack(bundle, tmp_path / "bundle.tar.gz")
    with tarfile.open(info.path) as tar:
        assert not [n for n in tar.getnames() if n.startswith("device-runs")]
    volatile = {v["path"] for v in read_manifest(bundle)["reproducibility"]["volatile"]}
    assert "device-runs/" in volatile
    # ...but only at the top: elsewhere it is an extra file like any other.
    (bundle / "tokenizer").mkdir(exist_ok=True)
    (bundle / "tokenizer" / "device-runs").write_text("x")
    assert check_bundle_files(bundle) == [
        "extra: tokenizer/device-runs (not listed in manifest.json)"
    ]


# --------------------------------------------------------------------------- real sshd


def test_verify_on_device_onnxruntime(sshd: Device, ort_bundle: Path) -> None:
    result = run_cli("verify", str(ort_bundle), "--runs", "3", "--json", *sshd.args())
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    _check_run(run, "onnxruntime", 3)
    assert run["target"] == sshd.target
    assert (
        run["bundle"]["content_sha256"]
        == read_manifest(ort_bundle)["reproducibility"]["content_sha256"]
    )
    kept = Path(run["file"])
    assert kept.parent == ort_bundle / "device-runs" and kept in _device_runs(ort_bundle)
    assert kept.name.startswith("127.0.0.1-") and kept.name.endswith("Z.json")
    assert json.loads(kept.read_text())["device"] == run["device"]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"PASS on {sshd.target} (") and "p90" in line and "peak memory" in line
    assert sshd.leftovers() == []
    # The device run is not part of the bundle: both verifiers still pass, and list it.
    host = run_cli("verify", str(ort_bundle), "--runs", "1", "--json")
    assert host.returncode == 0, host.stderr
    listed = json.loads(host.stdout)["device_runs"]
    assert [d["file"] for d in listed] == [str(p) for p in _device_runs(ort_bundle)]
    assert listed[-1]["passed"] and listed[-1]["current"] is True
    assert f"PASS on {sshd.target}" in host.stderr
    own = subprocess.run(
        [sys.executable, str(ort_bundle / "verify.py"), "--runs", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert own.returncode == 0, own.stdout + own.stderr


def test_verify_archive_on_device_keeps_the_run_beside_it(
    sshd: Device, ort_bundle: Path, tmp_path: Path
) -> None:
    from edgeport.archive import pack

    archive = pack(ort_bundle, tmp_path / "tiny-ort.tar.gz").path
    run = device.verify_on_device(
        archive, sshd.target, python=sshd.python, runs=1, ssh_options=sshd.options
    )
    assert run["passed"] and run["bundle"]["path"] == str(archive)
    kept = device.save_device_run(run, archive)
    assert kept.parent == tmp_path / "tiny-ort.device-runs"
    again = device.save_device_run(run, archive)  # same host, same second: never replaced
    assert again != kept and again.name.endswith("Z-2.json")
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([kept.name, again.name])
    assert sshd.leftovers() == []


def test_verify_on_device_openvino(
    sshd: Device, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bundle = tmp_path_factory.mktemp("ov") / "tiny-ov"
    converted = run_cli(
        "convert", str(tiny_bert), "--profile", PROFILE, "--recipe", "openvino-fp32",
        "--out", str(bundle),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    result = run_cli("verify", str(bundle), "--runs", "2", "--json", *sshd.args())
    assert result.returncode == 0, result.stderr
    _check_run(json.loads(result.stdout), "openvino", 2)
    assert sshd.leftovers() == []


def _fails(
    sshd: Device, bundle: Path, code: int, words: str, *args: str
) -> subprocess.CompletedProcess[str]:
    before = _device_runs(bundle)
    result = run_cli("verify", str(bundle), *args)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert sshd.leftovers() == [] and _device_runs(bundle) == before
    return result


def test_unreachable_device_is_exit_6(sshd: Device, ort_bundle: Path) -> None:
    closed = replace(sshd, target=f"ssh://127.0.0.1:{free_port()}")
    _fails(sshd, ort_bundle, 6, "Connection refused", *closed.args())


def test_refused_key_is_exit_6(sshd: Device, ort_bundle: Path) -> None:
    stranger = replace(
        sshd,
        options=tuple(
            f"IdentityFile={sshd.root / 'stranger_key'}" if o.startswith("IdentityFile=") else o
            for o in sshd.options
        ),
    )
    _fails(sshd, ort_bundle, 6, "Permission denied", *stranger.args())


def test_no_python_on_the_device_is_exit_4(sshd: Device, ort_bundle: Path) -> None:
    _fails(
        sshd, ort_bundle, 4, "no Python at '/nonexistent/python'",
        *sshd.args(python="/nonexistent/python"),
    )  # fmt: skip


def test_too_old_python_on_the_device_is_exit_4(
    sshd: Device, ort_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap checks the version before compiling anything (here: "3.10" is 99.0)."""
    monkeypatch.setattr(device, "MIN_PYTHON", (99, 0))
    with pytest.raises(UnsupportedError, match=r"verify\.py needs Python 99\.0 or newer"):
        device.verify_on_device(
            ort_bundle, sshd.target, python=sshd.python, runs=1, ssh_options=sshd.options
        )
    assert sshd.leftovers() == []


def test_device_options_need_on(ort_bundle: Path) -> None:
    result = run_cli("verify", str(ort_bundle), "--python", "python3")
    assert result.returncode == 2 and "only with --on" in result.stderr


def test_missing_runtime_on_the_device_names_the_package(
    sshd: Device, ort_bundle: Path, tmp_path: Path
) -> None:
    """A device Python that has numpy but not onnxruntime: this venv's, without its
    site-packages (-S), with only numpy on its path."""
    import numpy

    site = tmp_path / "site"
    site.mkdir()
    packages = Path(numpy.__file__).parents[1]
    for name in ("numpy", "numpy.libs", f"numpy-{numpy.__version__}.dist-info"):
        if (packages / name).exists():
            (site / name).symlink_to(packages / name)
    python = tmp_path / "python-without-runtime"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    version = read_manifest(ort_bundle)["versions"]["onnxruntime"]
    _fails(
        sshd, ort_bundle, 4, f"onnxruntime is not installed for {python}: "
        f"pip install onnxruntime=={version}", *sshd.args(python=str(python)),
    )  # fmt: skip


def test_cpu_without_the_bundles_isa_is_exit_5(
    sshd: Device, unfit_bundle: tuple[Path, str]
) -> None:
    bundle, feature = unfit_bundle
    result = _fails(sshd, bundle, 5, f"lacks {feature}", "--json", *sshd.args())
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 5 and feature in error["message"]


def test_bundle_changed_on_the_way_is_exit_3(
    sshd: Device, ort_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte changes after packing (the sha256 sent is the packed one): the device refuses."""
    import edgeport.archive

    original: Callable[..., Any] = edgeport.archive.pack

    def corrupting(bundle: Path, out: Path | None = None, **kwargs: Any) -> Any:
        info = original(bundle, out, **kwargs)
        data = bytearray(info.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        info.path.write_bytes(bytes(data))
        return info

    monkeypatch.setattr(edgeport.archive, "pack", corrupting)
    before = _device_runs(ort_bundle)
    with pytest.raises(VerificationError, match="changed on the way") as caught:
        device.verify_on_device(
            ort_bundle, sshd.target, python=sshd.python, runs=1, ssh_options=sshd.options
        )
    assert "\n" not in str(caught.value) and caught.value.exit_code == 3
    assert sshd.leftovers() == [] and _device_runs(ort_bundle) == before


def test_build_with_devices_fails_the_pair_that_fails_on_its_device(
    sshd: Device,
    ort_bundle: Path,
    unfit_bundle: tuple[Path, str],
    tiny_bert: Path,
    tmp_path: Path,
) -> None:
    """`build --devices`: each bundle is verified on its profile's device; the one whose
    CPU lacks a feature of its profile fails the build (index.json says why)."""
    import yaml

    from edgeport.build import BuildFile, ModelEntry, build_exit_code, load_devices_file, run_build

    unfit, feature = unfit_bundle
    profile = yaml.safe_load(
        (Path(__file__).parents[1] / "profiles" / f"{PROFILE}.yaml").read_text()
    )
    profile["id"] = "lab-board"
    profile["cpu"]["features"].append(feature)
    (tmp_path / "lab-board.yaml").write_text(yaml.safe_dump(profile))
    prepared = {PROFILE: ort_bundle, str(tmp_path / "lab-board.yaml"): unfit}

    def fake_convert(request: Any, progress: Any) -> Any:
        """The conversions are other tests' business: copy a converted bundle."""
        shutil.copytree(
            prepared[request.profile], request.out, ignore=shutil.ignore_patterns("device-runs")
        )
        return SimpleNamespace(
            bundle=request.out,
            report=None,
            verdict="passed",
            plan=SimpleNamespace(model=SimpleNamespace(commit=None)),
            chosen=SimpleNamespace(recipe_id="onnx-fp32"),
        )

    inventory = tmp_path / "devices.yaml"
    entry = {
        "target": sshd.target,
        "python": sshd.python,
        "ssh_options": list(sshd.options),
        "runs": 2,
    }
    inventory.write_text(yaml.safe_dump({"devices": {PROFILE: entry, "lab-board": entry}}))
    build = BuildFile(
        models=[ModelEntry(id=str(tiny_bert), name="tiny")],
        profiles=[PROFILE, str(tmp_path / "lab-board.yaml")],
        out=tmp_path / "out",
        verify=False,
    )
    records, index = run_build(build, convert=fake_convert, devices=load_devices_file(inventory))
    good, bad = records
    assert good["exit_code"] == 0 and good["device_run"]["passed"] is True
    assert good["device_run"]["latency_median_ms"] > 0 and good["device_run"]["peak_memory_mb"] > 0
    assert Path(good["device_run"]["file"]).parent == Path(good["bundle"]) / "device-runs"
    assert good["archive"] is not None
    assert bad["exit_code"] == 5 and f"lacks {feature}" in bad["error"]
    assert bad["device_run"]["target"] == sshd.target and bad["archive"] is None
    assert build_exit_code(records) == 5
    assert json.loads(index.read_text())["pairs"] == records
    assert sshd.leftovers() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("devices: {x86-64-avx2: 'pi@board'}\n", "not an ssh:// address"),
        ("devices: {x86-64-avx2: {target: 'ssh://b', pyhton: x}}\n", "pyhton"),
        ("devices: {Not_A_Slug: 'ssh://b'}\n", "Not_A_Slug"),
        ("device: {}\n", "devices"),
    ],
)
def test_a_bad_devices_file_is_one_line_exit_2(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "devices.yaml").write_text(text)
    (tmp_path / "build.yaml").write_text("models: [{id: a/b}]\nprofiles: [x86-64-avx2]\n")
    result = run_cli(
        "build", str(tmp_path / "build.yaml"), "--devices", str(tmp_path / "devices.yaml")
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bundles").exists()


def test_verify_a_vision_bundle_on_device_openvino(
    sshd: Device, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A vision bundle (pixel golden data, ondevice.py preprocessing) verifies over SSH
    on the other runtime too."""
    pytest.importorskip("skimage", reason='needs the vision extra: pip install -e ".[vision]"')
    from test_vision import build_tiny_convnext

    root = tmp_path_factory.mktemp("vision")
    bundle = root / "tiny-convnext-ov"
    converted = run_cli(
        "convert", str(build_tiny_convnext(root / "model")), "--profile", PROFILE,
        "--recipe", "openvino-fp32", "--out", str(bundle),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    result = run_cli("verify", str(bundle), "--runs", "2", "--json", *sshd.args())
    assert result.returncode == 0, result.stderr
    _check_run(json.loads(result.stdout), "openvino", 2)
    assert sshd.leftovers() == []
