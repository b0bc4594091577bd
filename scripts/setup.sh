#!/usr/bin/env bash
# Create ./.venv and install tomesd with the given extras (comma-separated: ui, vision, llm, llm-weights, dev).
# torch/torchvision are installed first, pinned by constraints.txt, so no other package pulls another build.
# With "dev", Debian's chromium is installed too (for the browser tests), when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-ui}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" torch torchvision
"${pip[@]}" -e ".[${extras}]"
if [[ ",${extras}," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: /usr/bin/chromium is missing; the browser tests will be skipped (apt-get install chromium)" >&2
    fi
fi
