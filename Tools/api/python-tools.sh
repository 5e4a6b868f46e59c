#!/usr/bin/env bash
# Installs the API tests' Python tools (requirements.txt) into a virtual environment cached
# outside the repository, keyed by the requirements, and prints its folder. The first run
# needs PyPI; later runs reuse the folder.
#
#   Tools/api/python-tools.sh        # prints e.g. ~/.cache/swiftvisor/python-tools-1a2b3c4d5e6f7081
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(sha256sum "$here/requirements.txt" | cut -c1-16)
cache=${SWIFTVISOR_CACHE:-$HOME/.cache/swiftvisor}
venv="$cache/python-tools-$key"
if [ -x "$venv/bin/schemathesis" ] && [ -f "$venv/.complete" ]; then
    echo "$venv"
    exit 0
fi

# pyrecracker needs Python 3.12 or later: the newest on PATH, else one pyenv installed.
python=""
for candidate in python3.14 python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
        python=$(command -v "$candidate")
        break
    fi
done
if [ -z "$python" ]; then
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
        [ -x "$candidate" ] && python=$candidate
    done
fi
if [ -z "$python" ]; then
    echo "python-tools: Python 3.12 or later is needed (pyrecracker requires it); none was found" >&2
    exit 1
fi

echo "python-tools: installing $(tr '\n' ' ' < <(grep -v '^#' "$here/requirements.txt")) with $python" >&2
rm -rf "$venv"
mkdir -p "$cache"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
touch "$venv/.complete"
echo "$venv"
