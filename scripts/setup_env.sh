#!/usr/bin/env bash
# Prepare a fresh machine: the ffmpeg binary, redis-server (the tests start their own Redis for
# the client's shared job store) and Chromium with its driver (the web app's browser test), from
# apt, and a Python 3.11 virtual environment in .venv with the pinned requirements. Safe to run
# again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
for tool in ffmpeg ffprobe redis-server chromium chromedriver; do
    command -v "$tool" >/dev/null || missing=1
done
if [ -n "$missing" ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq ffmpeg redis-server chromium chromium-driver
fi

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            python_bin="$candidate"
            break
        fi
    done
fi
[ -n "$python_bin" ] || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)." >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip check
    echo "$want" > "$stamp"
fi
