#!/usr/bin/env bash
# Set up the SAMA platform on a fresh machine (Debian/Ubuntu, Python >= 3.10).
#   bash scripts/setup.sh          # the platform and its CLI (`sama`)
#   bash scripts/setup.sh --dev    # + what the tests need (pytest, moto server, chromium)
# torch goes first and pinned, so no later requirement can pull a multi-GB CUDA build
# onto a CPU machine; GPU images pick their own torch (infra/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
TORCH_VERSION="${SAMA_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if [[ $DEV == 1 ]] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "[setup] pip install torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" >"$constraints"
extra=""; [[ $DEV == 1 ]] && extra="[dev]"
echo "[setup] pip install -e .$extra"
"$PY" -m pip install -q -c "$constraints" -e ".$extra"
echo "[setup] done: $("$PY" -c 'import torch, ray, diffusers; print(f"torch {torch.__version__}, ray {ray.__version__}, diffusers {diffusers.__version__}")')"
