#!/usr/bin/env bash
# Creates (or refreshes) .venv at the repository root with every dependency of hummingml, from the package
# registries only. Usage: ./install.sh [--python PYTHON] [--neuron] [--no-dev]
#   --python PYTHON  interpreter to build the venv with (default: python3.11, else python3).
#   --neuron         Trainium host: keep the Neuron SDK's torch, torch-neuronx and neuronx-distributed that are
#                    already installed in that interpreter's environment (see README) instead of the locked torch.
#   --no-dev         the runtime lock only: no test or lint tools (requirements/dev-lock*.txt); images use this.
set -euo pipefail
cd "$(dirname "$0")"

python_bin=""
neuron=0
dev=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python_bin="$2"; shift 2 ;;
    --neuron) neuron=1; shift ;;
    --no-dev) dev=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$python_bin" ]; then
  if command -v python3.11 >/dev/null 2>&1 && python3.11 -c '' 2>/dev/null; then python_bin=python3.11; else python_bin=python3; fi
fi
version=$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$version" in
  3.10) lock=requirements/lock-py310.txt; dev_lock=requirements/dev-lock-py310.txt ;;
  3.1[1-9]) lock=requirements/lock.txt; dev_lock=requirements/dev-lock.txt ;;
  *) echo "install.sh: Python >= 3.10 is required, $python_bin is $version" >&2; exit 2 ;;
esac

if [ "$neuron" = 1 ]; then
  "$python_bin" -m venv --system-site-packages .venv
else
  "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade "pip>=24"
if [ "$neuron" = 1 ]; then
  # The Neuron SDK pins its own torch; install everything else from the lock around it.
  # torchaudio X.Y matches torch X.Y; it is installed without dependencies so that pip leaves Neuron's torch alone.
  torch_minor=$(.venv/bin/python -c 'import torch; print(".".join(torch.__version__.split(".")[:2]))')
  grep -v -E '^(torch|torchaudio|nvidia-|triton|cuda-)' "$lock" > .venv/lock-neuron.txt
  "${pip[@]}" install --no-deps "torchaudio==${torch_minor}.*"
  "${pip[@]}" install -r .venv/lock-neuron.txt
else
  "${pip[@]}" install -r "$lock"
fi
if [ "$dev" = 1 ]; then
  "${pip[@]}" install -r "$dev_lock"  # the test and lint tools, on top of the runtime lock
fi
# Installed without their declared dependencies (reasons in the file); their real runtime dependencies are in the lock.
"${pip[@]}" install --no-deps -r requirements/no-deps.txt
"${pip[@]}" install --no-deps --no-build-isolation -e .
.venv/bin/python -m hummingml.doctor
