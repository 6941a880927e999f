#!/usr/bin/env bash
# Build the radiomics benchmark peers in their own virtual environments under /tmp.
# Never installs into the project venv. Usage: bash benchmarks/setup_radiomics_peers.sh
# Environment: PEER_ROOT (default /tmp), PYTHON (default python3, must be 3.11).
set -euo pipefail
PEER_ROOT="${PEER_ROOT:-/tmp}"
PYTHON="${PYTHON:-python3}"

setup_pyradiomics() {
  local venv="$PEER_ROOT/peer_pyrad"
  if "$venv/bin/python" -c "import radiomics" 2>/dev/null; then
    echo "pyradiomics: already installed in $venv"; return 0
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q numpy setuptools wheel
  # PyRadiomics 3.0.1 has no wheel for py>=3.10 and needs numpy at build time.
  "$venv/bin/pip" install -q --no-build-isolation --no-cache-dir pyradiomics==3.0.1
  "$venv/bin/python" -c "import radiomics; print('pyradiomics', radiomics.__version__)"
}

setup_mirp() {
  local venv="$PEER_ROOT/peer_mirp"
  if "$venv/bin/python" -c "import mirp" 2>/dev/null; then
    echo "mirp: already installed in $venv"; return 0
  fi
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q mirp==2.7.0  # the version the README figures come from
  "$venv/bin/python" -c "import importlib.metadata as m; print('mirp', m.version('mirp'))"
}

case "${1:-all}" in
  pyradiomics) setup_pyradiomics ;;
  mirp) setup_mirp ;;
  all) setup_pyradiomics; setup_mirp ;;
  *) echo "usage: $0 [all|pyradiomics|mirp]" >&2; exit 2 ;;
esac
