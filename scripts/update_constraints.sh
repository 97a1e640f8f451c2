#!/usr/bin/env bash
# Regenerate constraints.txt as exactly what the README's install puts into a fresh virtual
# environment: current pins are kept, new dependencies get the version pip picks today.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c constraints.txt -e ".[dev,openvino,vision,gguf,ray]"
{
  sed -n '1,/^# A pin here/p' constraints.txt
  # torch stays pinned without the local "+cpu" tag: the CPU build is what `torch==2.13.0`
  # resolves to here, and the tag would stop other hosts from finding it.
  "$work/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^edgeport' \
    | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
