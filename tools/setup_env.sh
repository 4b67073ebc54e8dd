#!/usr/bin/env bash
# Set-up on a fresh machine: a virtualenv in .venv with a CPU-capable torch,
# torchaudio 2.9, SpeechBrain 1.1.2 and this package (editable), plus the
# espeak-ng speech synthesiser that the demo corpus generator uses.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing espeak-ng (Debian package) for the demo corpus"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
    else
        echo "[setup] espeak-ng is missing: install it (e.g. 'sudo apt-get install espeak-ng')" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.brq-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
    echo "[setup] installing torch 2.9.1, torchaudio 2.9, speechbrain and this package (first time: a few minutes)"
    # torchaudio 2.9 is the last release whose wheels run on CPU-only
    # machines with PyPI's torch; pin both together.
    "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.9.1 'torchaudio==2.9.*'
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, torchaudio, speechbrain, lobes; print('[setup] ok: torch', torch.__version__, '| speechbrain', speechbrain.__version__)"
