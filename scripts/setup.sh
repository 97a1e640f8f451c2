#!/usr/bin/env bash
# Everything a new user needs, then the main job on the built-in example:
#   1. the system packages edgeport's features use (Debian/Ubuntu, when missing),
#   2. a virtual environment (.venv, or $EDGEPORT_VENV) with the one tested set of versions,
#   3. the real all-MiniLM-L6-v2 converted for this machine (`--profile host`), then the
#      bundle's own run.py and verify.py, which need only the runtime and numpy.
# Works offline apart from the package registries; CI (.ci/run) runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${EDGEPORT_VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
EXAMPLE_MODEL=${EDGEPORT_EXAMPLE_MODEL:-$REPO/examples/models/all-MiniLM-L6-v2}
EXAMPLE_BUNDLE=${EDGEPORT_EXAMPLE_BUNDLE:-$REPO/bundles/all-MiniLM-L6-v2-host}
# Debian packages the features need, as "command:package" (checked by command, installed
# only when missing).
SYSTEM_PACKAGES=(
  "ssh:openssh-client"   # edgeport verify --on ssh://... (device runs)
  "sshd:openssh-server"  # the tests' loopback SSH "device"
  "espeak-ng:espeak-ng"  # synthesised speech for speech models' calibration and validation
  "cmake:cmake"          # pip builds llama-cpp-python (the llama.cpp target) from source,
  "g++:g++"              # with cmake and a C++ compiler
)

say() { printf '\n==> %s\n' "$*" >&2; }

# Nothing from the machine's own Python setup may leak into the environment.
unset PYTHONPATH PYTHONHOME PIP_USER PIP_PREFIX PIP_TARGET VIRTUAL_ENV

missing=()
for entry in "${SYSTEM_PACKAGES[@]}"; do
  name=${entry%%:*}
  command -v "$name" >/dev/null 2>&1 || [[ -x /usr/sbin/$name ]] || missing+=("${entry#*:}")
done
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  say "System packages: ${missing[*]}"
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "install these system packages, then run this script again: ${missing[*]}" >&2
    exit 1
  fi
fi

say "Python environment: $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev,openvino,vision,gguf,ray]"
"$VENV/bin/edgeport" --version

say "Built-in example: the real sentence-transformers/all-MiniLM-L6-v2"
model=$("$VENV/bin/python" scripts/example_model.py "$EXAMPLE_MODEL")
export HF_HUB_OFFLINE=1
(
  set -x
  "$VENV/bin/edgeport" convert "$model" --profile host --out "$EXAMPLE_BUNDLE" --force
  "$VENV/bin/python" "$EXAMPLE_BUNDLE/run.py" "A bundle that runs and checks itself on the device."
  "$VENV/bin/python" "$EXAMPLE_BUNDLE/verify.py"
)
say "Ready. Activate the environment with: source ${VENV#"$REPO"/}/bin/activate"
