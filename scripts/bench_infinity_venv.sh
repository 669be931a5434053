#!/usr/bin/env bash
# The virtual environment of bench/compare_infinity.py: Infinity (infinity-emb), the popular
# embedding server greenroom is compared with, kept apart from greenroom's own .venv.
#
#   bash scripts/bench_infinity_venv.sh [VENV]     # default ~/.cache/greenroom/bench-infinity-venv
#
# bench/compare_infinity.py runs this itself when VENV has no stamp of the pinned version.
# torch 2.13.0 goes in first on its own, so pip takes the CPU build on disk instead of a CUDA one;
# the constraints keep it there while infinity-emb comes in. The other pins are the versions this
# was verified with (Python 3.11, offline): Infinity's optimum (ONNX Runtime) engine works with
# optimum 2.1 + optimum-onnx 0.1 (optimum 1.x cannot import with torch 2.13), and
# sentence-transformers 3.4 (infinity-emb wants < 4) with transformers 4.57.
# A finished venv has $VENV/.bench-infinity-stamp; without it the folder is built anew.
set -euo pipefail

INFINITY_VERSION="0.0.78"
VENV="${1:-$HOME/.cache/greenroom/bench-infinity-venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.bench-infinity-stamp"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "infinity-emb==$INFINITY_VERSION" ]]; then
    echo "bench-infinity venv ready: $VENV"
    exit 0
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<'EOF'
torch==2.13.0
optimum==2.1.0
optimum-onnx==0.1.0
onnxruntime==1.32.0
transformers==4.57.6
sentence-transformers==3.4.1
EOF

rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -c "$constraints" \
    "infinity-emb[server,torch,optimum]==$INFINITY_VERSION"
"$VENV/bin/python" -c "import infinity_emb, optimum.onnxruntime, torch; print('torch', torch.__version__)"
echo "infinity-emb==$INFINITY_VERSION" >"$STAMP"
echo "bench-infinity venv ready: $VENV"
