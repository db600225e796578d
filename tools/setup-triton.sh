#!/usr/bin/env bash
# clipfilter: install a real Triton Inference Server (CPU only) for the tests of crates/triton.
# Idempotent; a second run takes seconds. Everything goes to .local/triton/ (never committed).
#
#   bash tools/setup-triton.sh [--no-apt] [--no-check] [--help]
#
# Steps (each skipped when already done):
#   1. Debian's python3.11 with its shared libpython (apt: python3.11 python3.11-venv libpython3.11)
#   2. tritonserver 2.51 from PyPI's nvidia-pytriton wheel -> .local/triton/server/
#   3. the python backend's environment: venv .local/triton/venv (tools/requirements-triton.txt)
#   4. the launcher .local/triton/bin/tritonserver
#   5. a check: a generated repository for tests/fixtures/tiny-clip loads and answers ready
set -euo pipefail

PYTRITON_VERSION=0.7.0
PYTRITON_WHEEL="nvidia_pytriton-${PYTRITON_VERSION}-py3-none-manylinux_2_35_x86_64.whl"
PYTRITON_SHA256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
TRITON_VERSION=2.51.0
SYS_PY=/usr/bin/python3.11
STEPS=5

usage() {
    cat <<'USAGE'
Usage: bash tools/setup-triton.sh [--no-apt] [--no-check] [--help]

Installs a CPU-only Triton Inference Server 2.51 for the tests of crates/triton (clipfilter-triton),
idempotently, into .local/triton/:
  1. apt: python3.11 python3.11-venv libpython3.11 (the python backend stub links Debian's
     libpython3.11, so the server's python environment must be Debian's python 3.11)
  2. tritonserver from PyPI's nvidia-pytriton 0.7.0 wheel (55 MB, sha256-checked), with the python
     backend and its 3.11 stub -> .local/triton/server/ (144 MB)
  3. venv .local/triton/venv with numpy and onnxruntime (tools/requirements-triton.txt; 41 MB
     download, 170 MB)
  4. launcher .local/triton/bin/tritonserver (PATH and --backend-directory set; other options as given)
  5. check: tools/triton_repo.py writes a repository for tests/fixtures/tiny-clip, the server loads
     it and answers ready (done again only when something above changed)

Options:
  --no-apt    skip the apt step (fails if python3.11 or libpython3.11 is missing)
  --no-check  skip step 5
  --help      this text

Run a server by hand:
  .local/triton/venv/bin/python tools/triton_repo.py tests/fixtures/tiny-clip /tmp/repo
  .local/triton/bin/tritonserver --model-repository=/tmp/repo --grpc-port=8001
USAGE
}

DO_APT=1
DO_CHECK=1
for arg in "$@"; do
    case "$arg" in
        --no-apt) DO_APT=0 ;;
        --no-check) DO_CHECK=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOCAL="$ROOT/.local"
DEST="$LOCAL/triton"
SERVER="$DEST/server"
VENV="$DEST/venv"
TRITON_BIN="$SERVER/pytriton/tritonserver/bin/tritonserver"
BACKENDS="$SERVER/pytriton/tritonserver/backends"
mkdir -p "$DEST"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/clipfilter-setup-triton.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "error: tools/setup-triton.sh failed at line $LINENO (see the messages above)" >&2' ERR

T0=$SECONDS
step() { echo "==> [$1/$STEPS] $2"; }
info() { echo "    $*"; }
die() { echo "error: $*" >&2; exit 1; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# ------------------------------------------------------------------------------------------------
step 1 "Debian python3.11 with libpython3.11"
APT_PACKAGES=(python3.11 python3.11-venv libpython3.11)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    info "installed: ${APT_PACKAGES[*]}"
elif [[ $DO_APT -eq 0 ]]; then
    die "missing Debian packages: ${missing[*]} (install them, or run without --no-apt)"
else
    info "installing: ${missing[*]}"
    if [[ -n "$SUDO" ]] && ! command -v sudo >/dev/null; then
        die "not root and no sudo: install ${missing[*]} or rerun with --no-apt"
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed"
fi
[[ -x "$SYS_PY" ]] || die "$SYS_PY not found (Debian 12's python3.11 package)"
LIBPY="$("$SYS_PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") + "/" + sysconfig.get_config_var("INSTSONAME"))')"
[[ -f "$LIBPY" ]] || die "$LIBPY not found (apt-get install libpython3.11)"

# ------------------------------------------------------------------------------------------------
step 2 "tritonserver $TRITON_VERSION from nvidia-pytriton $PYTRITON_VERSION"
SERVER_STAMP="$SERVER/.clipfilter-wheel.sha256"
if [[ -x "$TRITON_BIN" && -x "$BACKENDS/python/triton_python_backend_stub" && -f "$SERVER_STAMP" \
      && "$(cat "$SERVER_STAMP")" == "$PYTRITON_SHA256" ]]; then
    info "present: ${TRITON_BIN#"$ROOT"/}"
else
    t=$SECONDS
    # The wheel is downloaded into the temporary folder and removed after extraction (pip keeps
    # its own cache); only the stamp below remembers it.
    WHEEL="$TMP/$PYTRITON_WHEEL"
    info "downloading $PYTRITON_WHEEL (55 MB) from PyPI"
    "$SYS_PY" -m pip download --disable-pip-version-check --no-input -q --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_35_x86_64 -d "$TMP" \
        "nvidia-pytriton==$PYTRITON_VERSION" >&2 || die "pip download nvidia-pytriton==$PYTRITON_VERSION failed"
    [[ -f "$WHEEL" ]] || die "pip did not leave $WHEEL"
    got="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
    [[ "$got" == "$PYTRITON_SHA256" ]] || die "$WHEEL: sha256 $got, expected $PYTRITON_SHA256"
    info "extracting pytriton/tritonserver/ and nvidia_pytriton.libs/"
    rm -rf "$SERVER" "$TMP/server"
    mkdir -p "$TMP/server"
    "$SYS_PY" - "$WHEEL" "$TMP/server" <<'PY' || die "extracting the wheel failed"
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
    z.extractall(out, names)
PY
    # The binaries lose their mode in a zip extraction. The libraries are found through RPATH
    # ($ORIGIN/../../../nvidia_pytriton.libs), so the wheel's layout is kept as it is.
    chmod +x "$TMP/server/pytriton/tritonserver/bin/tritonserver" \
        "$TMP/server/pytriton/tritonserver/python_backend_stubs/"*/triton_python_backend_stub
    # The python backend runs the stub found next to it; the 3.11 one links Debian's libpython3.11.
    cp "$TMP/server/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
        "$TMP/server/pytriton/tritonserver/backends/python/"
    mv "$TMP/server" "$SERVER"
    echo "$PYTRITON_SHA256" > "$SERVER_STAMP"
    info "done in $((SECONDS - t)) s ($(du -sh "$SERVER" | cut -f1) on disk)"
fi
if ldd "$TRITON_BIN" | grep -q "not found"; then
    die "tritonserver misses libraries: $(ldd "$TRITON_BIN" | grep 'not found' | tr -s ' \t' ' ')"
fi
if ldd "$BACKENDS/python/triton_python_backend_stub" | grep -q "not found"; then
    die "the python backend stub misses libraries: $(ldd "$BACKENDS/python/triton_python_backend_stub" | grep 'not found' | tr -s ' \t' ' ')"
fi

# ------------------------------------------------------------------------------------------------
step 3 "python backend environment .local/triton/venv"
REQ="$ROOT/tools/requirements-triton.txt"
VENV_STAMP="$VENV/.clipfilter-requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$VENV_STAMP" && "$(cat "$VENV_STAMP")" == "$want" ]]; then
    info "up to date with tools/requirements-triton.txt"
else
    t=$SECONDS
    if [[ -x "$VENV/bin/python" ]] && [[ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$SYS_PY")" ]]; then
        info "recreating: the venv was not made with $SYS_PY"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        info "creating with $SYS_PY ($("$SYS_PY" --version 2>&1))"
        "$SYS_PY" -m venv "$VENV" || die "'$SYS_PY -m venv' failed (apt-get install python3.11-venv)"
    fi
    info "installing tools/requirements-triton.txt (numpy 1.26, onnxruntime; 41 MB download)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQ" >&2 \
        || die "pip install -r tools/requirements-triton.txt failed"
    echo "$want" > "$VENV_STAMP"
    info "done in $((SECONDS - t)) s"
fi
"$VENV/bin/python" -c 'import numpy, onnxruntime' 2>/dev/null \
    || die "the venv cannot import numpy and onnxruntime (delete .local/triton/venv and rerun)"

# ------------------------------------------------------------------------------------------------
step 4 "launcher .local/triton/bin/tritonserver"
mkdir -p "$DEST/bin"
LAUNCHER="$DEST/bin/tritonserver"
cat > "$TMP/launcher" <<'SH'
#!/usr/bin/env bash
# Written by tools/setup-triton.sh: runs the bundled tritonserver with its python backend.
# The python backend stub embeds Debian's python 3.11 and finds the venv (numpy, onnxruntime)
# through PATH; --backend-directory points at the bundled backends. Other options pass through.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$here/venv/bin:$PATH"
exec "$here/server/pytriton/tritonserver/bin/tritonserver" \
    --backend-directory="$here/server/pytriton/tritonserver/backends" "$@"
SH
if [[ -f "$LAUNCHER" ]] && cmp -s "$TMP/launcher" "$LAUNCHER"; then
    info "present"
else
    install -m 0755 "$TMP/launcher" "$LAUNCHER"
    info "written"
fi

# ------------------------------------------------------------------------------------------------
step 5 "check: a tiny-clip repository loads and answers (every model, batch 2)"
CHECK_STAMP="$DEST/.clipfilter-check"
check_key="$(cat "$SERVER_STAMP" "$VENV_STAMP" "$LAUNCHER" tools/triton_repo.py tools/triton_model.py | sha256sum | cut -d' ' -f1)"
if [[ $DO_CHECK -eq 0 ]]; then
    info "skipped (--no-check)"
elif [[ -f "$CHECK_STAMP" && "$(cat "$CHECK_STAMP")" == "$check_key" ]]; then
    info "passed before (nothing changed since)"
else
    t=$SECONDS
    "$VENV/bin/python" tools/triton_repo.py tests/fixtures/tiny-clip "$TMP/repo" >/dev/null \
        || die "tools/triton_repo.py failed for tests/fixtures/tiny-clip"
    free_port() { "$SYS_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    grpc=$(free_port); http=$(free_port); metrics=$(free_port)
    "$LAUNCHER" --model-repository="$TMP/repo" --exit-on-error=false \
        --grpc-address=127.0.0.1 --grpc-port="$grpc" --http-address=127.0.0.1 --http-port="$http" \
        --metrics-address=127.0.0.1 --metrics-port="$metrics" \
        --backend-config=python,shm-region-prefix-name="clipfilter_setup_$$" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    # Ready within 120 s, then one batch of 2 through every model (readiness alone does not prove the
    # python backend works: with numpy 2 every model loads and every request fails).
    if ! "$VENV/bin/python" - "$http" "$TMP/repo/tiny-clip.clipfilter.json" "$SERVER_PID" <<'PY' >"$TMP/check.out" 2>&1; then
import json, os, sys, time, urllib.error, urllib.request
import numpy as np
port, summary, pid = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"
models = summary["models"]
deadline = time.monotonic() + 120
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("tritonserver exited")
    try:
        if all(urllib.request.urlopen(f"{base}/v2/models/{m}/ready", timeout=2).status == 200 for m in models.values()):
            break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit("not ready within 120 s")
    time.sleep(0.5)
h, w = summary["image_size"]
pixels = np.random.default_rng(0).integers(0, 256, (2, 3, h, w)).astype(np.uint8)
ids = np.full((2, summary["seq_len"] or 77), 49407, np.int64)
ids[:, 0] = 49406
cases = {
    "image": [("pixel_values", "FP32", pixels.astype(np.float32) / 255)],
    "image_fp16": [("pixel_values", "FP16", pixels.astype(np.float16) / 255)],
    "image_uint8": [("pixel_values", "UINT8", pixels)],
    "text": [(n, "INT64", ids if n == "input_ids" else np.ones_like(ids)) for n in summary["text_inputs"]],
}
for variant, model in models.items():
    # the binary extension of the HTTP protocol (JSON cannot carry FP16)
    header = json.dumps({"inputs": [
        {"name": n, "datatype": t, "shape": list(x.shape), "parameters": {"binary_data_size": x.nbytes}}
        for n, t, x in cases[variant]]}).encode()
    body = header + b"".join(np.ascontiguousarray(x).tobytes() for _, _, x in cases[variant])
    req = urllib.request.Request(f"{base}/v2/models/{model}/infer", body,
                                 {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))})
    try:
        out = json.load(urllib.request.urlopen(req, timeout=60))["outputs"][0]
    except urllib.error.HTTPError as e:
        sys.exit(f"{model}: HTTP {e.code}: {e.read().decode(errors='replace')}")
    if out["shape"] != [2, summary["embed_dim"]]:
        sys.exit(f"{model}: output shape {out['shape']}, expected [2, {summary['embed_dim']}]")
    print(f"{model}: ok")
PY
        cat "$TMP/check.out" >&2
        echo "---- tritonserver log (last 40 lines) ----" >&2
        tail -n 40 "$TMP/server.log" >&2
        die "the check failed: $(tail -n 1 "$TMP/check.out")"
    fi
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    rm -f /dev/shm/clipfilter_setup_$$* 2>/dev/null || true
    echo "$check_key" > "$CHECK_STAMP"
    info "all 4 models answered in $((SECONDS - t)) s"
fi

echo "==> Triton set-up done in $((SECONDS - T0)) s: .local/triton/bin/tritonserver ($TRITON_VERSION), .local/triton/venv/bin/python"
