#!/usr/bin/env bash
# clipfilter: the one idempotent set-up script. Run from anywhere; a second run takes seconds.
#
#   bash tools/setup.sh [--build] [--gpu] [--no-apt] [--help]
#
# Steps (each skipped when already done):
#   1. apt packages (GStreamer dev + plugins, mosquitto, nats-server, opencv-doc, ...)
#   2. ONNX Runtime shared library into .local/onnxruntime/lib/ (+ .local/env.sh)
#   3. sample media into .local/media/ (photos from scikit-image's wheel and opencv-doc, vtest.avi)
#   4. committed fixtures in tests/fixtures/ present? (regenerated with the torch venv only if missing)
#   5. light Python venvs .local/venv-ref (+ the photo pixel references in .local/fixtures/photos/)
#      and .local/venv-check (prometheus-client, for the tests)
#   6. with --build: release build of clipfilterd and the GStreamer plugin, plugin linked into the
#      user's GStreamer plugin folder
set -euo pipefail

ORT_VERSION=1.31.1
SKIMAGE_VERSION=0.26.0
PY_TAG=3.11

usage() {
    cat <<'USAGE'
Usage: bash tools/setup.sh [--build] [--gpu] [--no-apt] [--help]

Sets up everything clipfilter needs on a Debian 12 machine, idempotently:
  1. apt packages: GStreamer (dev, tools, base/good/bad/ugly/libav plugins, rtsp-server), mosquitto,
     nats-server (the NATS output's tests start it with -js), opencv-doc, pkg-config, unzip, python3-venv (sudo is used when not root)
  2. ONNX Runtime 1.31.1 libonnxruntime.so from PyPI's wheel -> .local/onnxruntime/lib/
     (.local/env.sh exports ORT_DYLIB_PATH)
  3. sample media -> .local/media/photos/ and .local/media/video/vtest.avi
  4. tests/fixtures/: regenerated (with the torch venv, ~6 GB) only when files are missing
  5. .local/venv-ref (transformers, pillow, numpy, onnxruntime; no torch) and photo pixel
     references -> .local/fixtures/photos/<model>/*.npy; .local/venv-check (prometheus-client:
     the tests parse /metrics with it)
  6. with --build: `cargo build --release --workspace` (clipfilterd and libgstclipfilter.so), and
     libgstclipfilter.so linked into ~/.local/share/gstreamer-1.0/plugins/ so that gst-launch-1.0
     and gst-inspect-1.0 find the clipfilter element without GST_PLUGIN_PATH

Options:
  --build   also do step 6
  --gpu     also install onnxruntime-gpu 1.31.1 (CUDA 13 / TensorRT providers) into
            .local/onnxruntime-gpu/lib/; .local/env.sh then points ORT_DYLIB_PATH there
  --no-apt  skip step 1 (no root/sudo needed)
  --help    this text
Environment: PYTHON=/path/to/python3.11 picks the interpreter for the venvs.
USAGE
}

WANT_GPU=0
DO_APT=1
DO_BUILD=0
for arg in "$@"; do
    case "$arg" in
        --build) DO_BUILD=1 ;;
        --gpu) WANT_GPU=1 ;;
        --no-apt) DO_APT=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CLIPFILTER_ROOT="$ROOT"
# shellcheck source=tools/venv.sh
source "$ROOT/tools/venv.sh"

LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/clipfilter-setup.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
trap 'echo "error: tools/setup.sh failed at line $LINENO (see the messages above)" >&2' ERR

T0=$SECONDS
step() { echo "==> [$1/6] $2"; }
info() { echo "    $*"; }
die() { echo "error: $*" >&2; exit 1; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# A python for small helper scripts (zip extraction, hashing); the venvs pick their own.
HOST_PY="$(clipfilter_pick_python 2>/dev/null || command -v python3 || true)"

# ------------------------------------------------------------------------------------------------
step 1 "apt packages"
APT_PACKAGES=(
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
    libgstrtspserver-1.0-dev gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav mosquitto nats-server opencv-doc
    pkg-config unzip python3-venv ca-certificates systemd
    chromium chromium-driver   # the web console's browser tests (tests/console.rs, WebDriver)
)
if [[ $DO_APT -eq 0 ]]; then
    info "skipped (--no-apt)"
else
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        info "all ${#APT_PACKAGES[@]} packages installed"
    else
        info "installing: ${missing[*]}"
        if [[ -n "$SUDO" ]] && ! command -v sudo >/dev/null; then
            die "not root and no sudo: install ${missing[*]} or rerun with --no-apt"
        fi
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            || die "apt-get install failed"
    fi
fi
[[ -n "$HOST_PY" ]] || HOST_PY="$(clipfilter_pick_python)" || die "no python >= 3.11"

# pip download of one wheel into $2; prints the wheel path
pip_download() {
    local spec="$1" dest="$2"; shift 2
    mkdir -p "$dest"
    "$HOST_PY" -m pip download --disable-pip-version-check --no-input -q --no-deps --only-binary=:all: \
        --python-version "$PY_TAG" "$@" -d "$dest" "$spec" >&2 || return 1
    ls "$dest"/*.whl | head -n1
}

# extract zip members matching a glob into a folder (flat)
unzip_members() {
    "$HOST_PY" - "$@" <<'PY'
import fnmatch, os, shutil, sys, zipfile
whl, dest, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(dest, exist_ok=True)
n = 0
with zipfile.ZipFile(whl) as z:
    for m in z.namelist():
        if any(fnmatch.fnmatch(m, p) for p in pats):
            out = os.path.join(dest, os.path.basename(m))
            with z.open(m) as src, open(out + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(out + ".part", out)
            n += 1
            print(os.path.basename(m))
if n == 0:
    sys.exit("no member of %s matches %s" % (whl, pats))
PY
}

# ------------------------------------------------------------------------------------------------
install_ort() {  # $1 = pip package, $2 = target lib dir, $3 = label
    local pkg="$1" libdir="$2" label="$3" whl
    local so="$libdir/libonnxruntime.so.$ORT_VERSION"
    if [[ -f "$so" && "$(readlink "$libdir/libonnxruntime.so" 2>/dev/null)" == "libonnxruntime.so.$ORT_VERSION" \
          && -f "$libdir/.complete" ]]; then
        info "$label: $ORT_VERSION already in ${libdir#$ROOT/}"
        return 0
    fi
    info "$label: downloading $pkg==$ORT_VERSION from PyPI"
    whl="$(pip_download "$pkg==$ORT_VERSION" "$TMP/$pkg" --platform manylinux_2_27_x86_64 \
           --platform manylinux_2_28_x86_64)" || die "pip download $pkg==$ORT_VERSION failed"
    info "$label: wheel $(basename "$whl") (platform tag: $(basename "$whl" .whl | rev | cut -d- -f1 | rev))"
    rm -rf "$libdir"
    mkdir -p "$libdir"
    unzip_members "$whl" "$libdir" 'onnxruntime/capi/libonnxruntime.so*' \
        'onnxruntime/capi/libonnxruntime_providers_*.so' | sed 's/^/      /' \
        || die "extracting the ONNX Runtime libraries failed"
    [[ -f "$so" ]] || die "$so missing in the wheel"
    ln -sfn "libonnxruntime.so.$ORT_VERSION" "$libdir/libonnxruntime.so"
    ln -sfn "libonnxruntime.so.$ORT_VERSION" "$libdir/libonnxruntime.so.1"
    touch "$libdir/.complete"
    info "$label: installed into ${libdir#$ROOT/}"
}

step 2 "ONNX Runtime $ORT_VERSION shared library"
install_ort onnxruntime "$LOCAL/onnxruntime/lib" "CPU"
if [[ $WANT_GPU -eq 1 ]]; then
    install_ort onnxruntime-gpu "$LOCAL/onnxruntime-gpu/lib" "GPU"
    info "GPU: the CUDA provider needs CUDA 13 runtime libraries and cuDNN 9 on the library path"
fi
ORT_LIB="$LOCAL/onnxruntime/lib/libonnxruntime.so"
if [[ -f "$LOCAL/onnxruntime-gpu/lib/.complete" ]]; then ORT_LIB="$LOCAL/onnxruntime-gpu/lib/libonnxruntime.so"; fi
ENV_SH="# Generated by tools/setup.sh. Usage: . .local/env.sh
# clipfilter finds .local/onnxruntime/lib/libonnxruntime.so by itself; this is for other tools and
# for choosing a library explicitly (the GPU build when tools/setup.sh --gpu was run).
export ORT_DYLIB_PATH=\"$ORT_LIB\"
# CPU build: $LOCAL/onnxruntime/lib/libonnxruntime.so"
if [[ ! -f "$LOCAL/env.sh" || "$(cat "$LOCAL/env.sh")" != "$ENV_SH" ]]; then
    printf '%s\n' "$ENV_SH" > "$LOCAL/env.sh"
    info "wrote .local/env.sh (ORT_DYLIB_PATH=${ORT_LIB#$ROOT/})"
else
    info ".local/env.sh up to date"
fi

# ------------------------------------------------------------------------------------------------
step 3 "sample media (.local/media)"
PHOTOS="$LOCAL/media/photos"
VIDEO="$LOCAL/media/video"
OPENCV_DATA=/usr/share/doc/opencv-doc/examples/data
# source name in skimage/data/ -> name in .local/media/photos/
SKIMAGE_PHOTOS=(
    "astronaut.png:astronaut.png"
    "chelsea.png:cat_chelsea.png"
    "coffee.png:coffee_cup.png"
    "rocket.jpg:rocket_launch.jpg"
    "camera.png:cameraman_gray.png"
    "motorcycle_left.png:motorcycle.png"
    "hubble_deep_field.jpg:hubble_deep_field.jpg"
    "coins.png:coins_gray.png"
)
OPENCV_PHOTOS=(
    "fruits.jpg:fruits.jpg"
    "baboon.jpg:baboon.jpg"
    "butterfly.jpg:butterfly.jpg"
    "messi5.jpg:football_player_messi.jpg"
    "orange.jpg:orange.jpg"
    "apple.jpg:apple.jpg"
    "squirrel_cls.jpg:squirrel.jpg"
    "starry_night.jpg:starry_night_painting.jpg"
    "building.jpg:building.jpg"
    "HappyFish.jpg:fish_small.jpg"
)
mkdir -p "$PHOTOS" "$VIDEO"
need_sk=0
for pair in "${SKIMAGE_PHOTOS[@]}"; do [[ -s "$PHOTOS/${pair#*:}" ]] || need_sk=1; done
if [[ $need_sk -eq 1 ]]; then
    info "photos: downloading scikit-image==$SKIMAGE_VERSION wheel (for skimage/data/)"
    whl="$(pip_download "scikit-image==$SKIMAGE_VERSION" "$TMP/skimage" --platform manylinux_2_28_x86_64 \
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64)" \
        || die "pip download scikit-image==$SKIMAGE_VERSION failed"
    pats=()
    for pair in "${SKIMAGE_PHOTOS[@]}"; do pats+=("skimage/data/${pair%%:*}"); done
    unzip_members "$whl" "$TMP/skdata" "${pats[@]}" >/dev/null || die "extracting skimage/data failed"
    for pair in "${SKIMAGE_PHOTOS[@]}"; do
        cp "$TMP/skdata/${pair%%:*}" "$PHOTOS/${pair#*:}.part" && mv "$PHOTOS/${pair#*:}.part" "$PHOTOS/${pair#*:}"
    done
    info "photos: ${#SKIMAGE_PHOTOS[@]} from scikit-image"
else
    info "photos: scikit-image photos present"
fi
n_cv=0
for pair in "${OPENCV_PHOTOS[@]}"; do
    dst="$PHOTOS/${pair#*:}"
    if [[ ! -s "$dst" ]]; then
        [[ -f "$OPENCV_DATA/${pair%%:*}" ]] || die "$OPENCV_DATA/${pair%%:*} missing (apt package opencv-doc)"
        cp "$OPENCV_DATA/${pair%%:*}" "$dst"
        n_cv=$((n_cv + 1))
    fi
done
info "photos: opencv-doc photos present (copied $n_cv now); $(ls "$PHOTOS" | wc -l) photos in ${PHOTOS#$ROOT/}"
if [[ ! -s "$VIDEO/vtest.avi" ]]; then
    [[ -f "$OPENCV_DATA/vtest.avi" ]] || die "$OPENCV_DATA/vtest.avi missing (apt package opencv-doc)"
    cp "$OPENCV_DATA/vtest.avi" "$VIDEO/vtest.avi"
    rm -f "$VIDEO/.vtest-decodes"
fi
if [[ ! -f "$VIDEO/.vtest-decodes" ]]; then
    command -v gst-launch-1.0 >/dev/null || die "gst-launch-1.0 not found (apt package gstreamer1.0-tools)"
    gst-launch-1.0 -q filesrc location="$VIDEO/vtest.avi" ! decodebin ! fakesink >/dev/null 2>"$TMP/gst.log" \
        || { cat "$TMP/gst.log" >&2; die "vtest.avi does not decode with GStreamer (decodebin)"; }
    touch "$VIDEO/.vtest-decodes"
    info "video: vtest.avi decodes with GStreamer (768x576, 10 fps CCTV footage)"
else
    info "video: vtest.avi present and checked"
fi

# ------------------------------------------------------------------------------------------------
# Runs the clip_tools package (tools/clip_tools/) with $CLIPFILTER_VENV_PY, as tools/clip-tools does
clip_tools() { PYTHONPATH="$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}" "$CLIPFILTER_VENV_PY" -P -m clip_tools "$@"; }

step 4 "test fixtures (tests/fixtures)"
MANIFEST="$ROOT/tests/fixtures/MANIFEST.sha256"
fixtures_ok=1
if [[ ! -f "$MANIFEST" ]]; then
    fixtures_ok=0
else
    while read -r _ path; do
        [[ -f "$ROOT/tests/fixtures/$path" ]] || { fixtures_ok=0; info "missing: tests/fixtures/$path"; }
    done < "$MANIFEST"
fi
if [[ $fixtures_ok -eq 1 ]]; then
    if (cd "$ROOT/tests/fixtures" && sha256sum --quiet -c MANIFEST.sha256 >/dev/null 2>&1); then
        info "all $(wc -l < "$MANIFEST") files present and matching MANIFEST.sha256"
    else
        info "WARNING: some fixture files differ from MANIFEST.sha256 (edited by hand?); not regenerating"
    fi
else
    info "fixtures missing: regenerating with the full tools venv (torch; takes a few minutes)"
    clipfilter_ensure_venv tools || die "could not set up .local/venv-tools"
    clip_tools make-fixtures || die "make-fixtures failed"
    # the trained digits fixture has its own command (a few minutes of training)
    clip_tools make-digits || die "make-digits failed"
fi

# ------------------------------------------------------------------------------------------------
step 5 "reference venv (.local/venv-ref) and photo pixel references (.local/fixtures/photos)"
clipfilter_ensure_venv ref || die "could not set up .local/venv-ref"
info "venv-ref: $("$CLIPFILTER_VENV_PY" -c 'import transformers, onnxruntime, numpy; print("transformers", transformers.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)' 2>/dev/null)"
REFS="$LOCAL/fixtures/photos"
refs_key="$( { (cd "$PHOTOS" && sha256sum -- *); cat "$ROOT/tests/fixtures/tiny-clip/preprocessor_config.json" \
    "$ROOT/tests/fixtures/tiny-clip-odd/preprocessor_config.json" "$ROOT/tools/requirements-ref.txt"
    (cd "$ROOT/tools" && find clip_tools -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); } \
    | sha256sum | cut -d' ' -f1)"
if [[ -f "$REFS/.stamp" && "$(cat "$REFS/.stamp")" == "$refs_key" ]]; then
    info "photo references up to date in ${REFS#$ROOT/}"
else
    clip_tools photo-refs || die "photo-refs failed"
    echo "$refs_key" > "$REFS/.stamp"
fi
# The parsers the tests check the daemon's output with (prometheus-client: /metrics).
clipfilter_ensure_venv check || die "could not set up .local/venv-check"
info "venv-check: prometheus-client $("$CLIPFILTER_VENV_PY" -c 'import importlib.metadata as m; print(m.version("prometheus-client"))' 2>/dev/null)"

echo "==> steps 1-5 done in $((SECONDS - T0)) s"

# ------------------------------------------------------------------------------------------------
# Rust build and GStreamer plugin install — owned by the Rust side
# (step 6: cargo build + plugin symlink go below this line; the tools/ owners do not edit it)
step 6 "Rust build and GStreamer plugin"
if [[ $DO_BUILD -eq 0 ]]; then
    info "skipped (pass --build for the release build and the plugin link)"
else
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
    cargo build --release --workspace --locked || die "cargo build failed"
    PLUGIN_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/gstreamer-1.0/plugins"
    mkdir -p "$PLUGIN_DIR"
    ln -sfn "$ROOT/target/release/libgstclipfilter.so" "$PLUGIN_DIR/libgstclipfilter.so"
    info "clipfilterd: target/release/clipfilterd"
    info "plugin: $PLUGIN_DIR/libgstclipfilter.so -> target/release/libgstclipfilter.so"
fi
echo "==> done in $((SECONDS - T0)) s"
