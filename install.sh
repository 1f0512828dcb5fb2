#!/usr/bin/env bash
# Installs everything on a fresh Debian machine with Python 3.11: ffmpeg from apt, then a
# virtual environment in .venv with the CPU build of torch first (a bare `torch` requirement
# would pull several GB of CUDA packages), then this project with its test extras.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends ffmpeg
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".[dev]"
echo "installed: $(.venv/bin/tvr --help | head -1)"
