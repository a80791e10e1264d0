#!/usr/bin/env bash
# The wheel works on its own: build the sdist and the wheel (the wheel from the sdist, so the
# sdist is complete too), install the wheel into a clean venv with its default dependencies
# only (no torch, no source tree on the path), then index a few generated images, search, and
# serve on a free port until GET /api/health answers. `make smoke-wheel`; not collected by pytest.
#
#   PYTHON=.venv/bin/python tests/smoke/smoke_wheel.sh   # the interpreter that builds (needs `build`)
#   KEEP=1 ...                                           # keep the work folder for a look
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cbir-smoke.XXXXXX")
SERVER=
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "smoke: kept $WORK"; fi
}
trap cleanup EXIT
t0=$SECONDS
step() { echo "smoke: [$((SECONDS - t0)) s] $*"; }

step "building the sdist and the wheel"
# --no-isolation: the building venv's setuptools (no index look-up); the wheel is built from
# the sdist, so a file missing from the sdist shows up as a broken wheel
"$PY" -m build --no-isolation --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/cbir-*.whl)
ls "$WORK"/dist/cbir-*.tar.gz >/dev/null
unzip -l "$WHEEL" >"$WORK/wheel.txt"
grep -q "cbir/extract/models/efficientnet-lite0.onnx" "$WORK/wheel.txt" \
  || { echo "smoke: the wheel has no packaged ONNX model"; exit 1; }
grep -q "dist-info/licenses/LICENSE" "$WORK/wheel.txt" || { echo "smoke: the wheel has no LICENSE"; exit 1; }

step "installing $(basename "$WHEEL") into a clean venv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WHEEL" >"$WORK/pip.log" 2>&1 \
  || { tail -30 "$WORK/pip.log"; exit 1; }
BIN=$WORK/venv/bin

cd "$WORK"  # not the source tree: the installed package must stand alone
export CBIR_CACHE_DIR=$WORK/cache CBIR_COLLECTION=$WORK/collection
"$BIN/python" - "$ROOT" <<'EOF'
import importlib.util, sys
from pathlib import Path
import cbir
root = Path(sys.argv[1]).resolve()
where = Path(cbir.__file__).resolve()
assert root not in where.parents, f"cbir imported from the source tree: {where}"
for heavy in ("torch", "onnx", "efficientnet_lite_pytorch"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed by the default install"
EOF

step "generating images"
"$BIN/python" - "$WORK/photos" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
out = Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
for i in range(6):
    base = np.zeros((160, 200, 3), np.uint8)
    base[..., i % 3] = 60 + 30 * i
    base[40:120, 50:150] = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    Image.fromarray(base).save(out / f"img{i}.jpg", quality=90)
EOF

step "cbir index"
"$BIN/cbir" index "$WORK/photos" -q
step "cbir search"
"$BIN/cbir" search "$WORK/photos/img3.jpg" -k 3 --json >"$WORK/hits.json"
"$BIN/python" - "$WORK/hits.json" <<'EOF'
import json, sys
hits = json.load(open(sys.argv[1]))["hits"]
assert len(hits) == 3 and hits[0]["path"].endswith("img3.jpg") and hits[0]["cosine"] > 0.99, hits
EOF
if ls "$CBIR_CACHE_DIR"/*.onnx >/dev/null 2>&1; then
  echo "smoke: an ONNX model was exported to the cache: the packaged one was not used"; exit 1
fi

step "cbir serve"
PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/cbir" serve --port "$PORT" --no-access-log --log-level warning >"$WORK/serve.log" 2>&1 &
SERVER=$!
"$BIN/python" - "$PORT" "$SERVER" <<'EOF' || { cat "$WORK/serve.log"; exit 1; }
import json, os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
            health = json.load(r)
        break
    except OSError as e:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"smoke: cbir serve exited: {e}")
        if time.monotonic() > deadline:
            sys.exit(f"smoke: no answer from /api/health in 60 s: {e}")
        time.sleep(0.3)
assert health["status"] == "ok" and health["images"] == 6, health
assert health["training_available"] is False, health  # no torch in the default install
print(f"smoke: /api/health: {health}")
EOF
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=
step "passed"
