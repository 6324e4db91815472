#!/usr/bin/env bash
# Build (and by default install) the ImgGbprAllocation AscendC custom operator package.
#
# CANN's project scaffolding (top-level CMakeLists.txt, cmake/*.cmake, scripts/, the
# project build.sh) is specific to the installed CANN version, so it is generated here
# with CANN's own `msopgen` from ImgGbprAllocation.json; this directory supplies the
# operator sources (op_host/, op_kernel/) and the preset values (CMakePresets.json,
# vendor "eve_ms") that are merged into the generated project.
#
# Usage: build.sh [--soc Ascend910B1] [--install-path DIR | --no-install] [--build-dir DIR] [--any-cann]
# Needs: CANN 9.0.0 (the version MindSpore 2.9.0 / MindFormers 1.9.0 are released with; --any-cann
# builds with another one at your own risk), ASCEND_HOME_PATH (source <CANN>/set_env.sh), msopgen,
# cmake >= 3.16, python3.
set -euo pipefail

CANN_VERSION="9.0.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OP_TYPE="ImgGbprAllocation"
VENDOR="eve_ms"
SOC="${SOC_VERSION:-Ascend910B1}"
BUILD_DIR="$HERE/build_out"
INSTALL_PATH=""
INSTALL=1
ANY_CANN=0

die() {
    echo "img_gbpr/build.sh: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --soc) SOC="${2:?--soc needs a value}"; shift 2 ;;
        --install-path) INSTALL_PATH="${2:?--install-path needs a value}"; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --build-dir) BUILD_DIR="${2:?--build-dir needs a value}"; shift 2 ;;
        --any-cann) ANY_CANN=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [[ -z "${ASCEND_HOME_PATH:-}" ]]; then
    die "ASCEND_HOME_PATH is not set: the Ascend CANN toolkit (CANN $CANN_VERSION) is required to build this operator.
Install CANN $CANN_VERSION (toolkit with the AscendC compiler and msopgen) and run
    source /usr/local/Ascend/ascend-toolkit/set_env.sh   # or <your CANN>/set_env.sh
then rerun this script. Without Ascend hardware, use evf.kernel: composed (or the CPU/GPU kernels)."
fi
[[ -d "$ASCEND_HOME_PATH" ]] || die "ASCEND_HOME_PATH=$ASCEND_HOME_PATH is not a directory (CANN not installed there?)"

# The installed version, as CANN records it (the file MindSpore's own custom-op build reads too).
VERSION_INFO="$ASCEND_HOME_PATH/compiler/version.info"
INSTALLED="$(sed -n 's/^Version=//p' "$VERSION_INFO" 2>/dev/null | head -n 1 || true)"
if [[ "$INSTALLED" != "$CANN_VERSION" && "$ANY_CANN" -eq 0 ]]; then
    die "this operator is written and checked for CANN $CANN_VERSION, but $VERSION_INFO says '${INSTALLED:-nothing}'.
Install CANN $CANN_VERSION, or pass --any-cann to build with this one anyway."
fi

MSOPGEN="$(command -v msopgen || true)"
if [[ -z "$MSOPGEN" && -x "$ASCEND_HOME_PATH/python/site-packages/bin/msopgen" ]]; then
    MSOPGEN="$ASCEND_HOME_PATH/python/site-packages/bin/msopgen"
fi
[[ -n "$MSOPGEN" ]] || die "msopgen not found on PATH nor in \$ASCEND_HOME_PATH/python/site-packages/bin \
(CANN toolkit incomplete?)"
command -v cmake >/dev/null || die "cmake (>= 3.16) not found"
command -v python3 >/dev/null || die "python3 not found"

PROJECT="$BUILD_DIR/project"
rm -rf "$PROJECT"
mkdir -p "$BUILD_DIR"
echo "generating the CANN operator project for $OP_TYPE (SoC $SOC) in $PROJECT"
"$MSOPGEN" gen -i "$HERE/$OP_TYPE.json" -c "ai_core-$SOC" -lan cpp -out "$PROJECT"
cp "$HERE"/op_host/* "$PROJECT/op_host/"
cp "$HERE"/op_kernel/* "$PROJECT/op_kernel/"

# Our preset values win, except the compute unit msopgen derived from --soc.
python3 - "$HERE/CMakePresets.json" "$PROJECT/CMakePresets.json" "$ASCEND_HOME_PATH" <<'PY'
import json, sys
ours_path, generated_path, cann = sys.argv[1:4]
ours = json.load(open(ours_path))["configurePresets"][0]["cacheVariables"]
generated = json.load(open(generated_path))
variables = generated["configurePresets"][0].setdefault("cacheVariables", {})
for name, entry in ours.items():
    if name in ("ASCEND_COMPUTE_UNIT", "CMAKE_INSTALL_PREFIX") and name in variables:
        continue
    variables[name] = entry
variables["ASCEND_CANN_PACKAGE_PATH"] = {"type": "PATH", "value": cann}
json.dump(generated, open(generated_path, "w"), indent=4)
PY

(cd "$PROJECT" && bash build.sh)
RUN_PACKAGE="$(ls "$PROJECT"/build_out/custom_opp_*.run 2>/dev/null | head -n 1 || true)"
[[ -n "$RUN_PACKAGE" ]] || die "the CANN build produced no custom_opp_*.run package (see the log above)"
cp "$RUN_PACKAGE" "$BUILD_DIR/"
echo "built $BUILD_DIR/$(basename "$RUN_PACKAGE")"

if [[ "$INSTALL" -eq 0 ]]; then
    echo "not installed (--no-install); install with: bash $BUILD_DIR/$(basename "$RUN_PACKAGE") [--install-path=DIR]"
    exit 0
fi
if [[ -n "$INSTALL_PATH" ]]; then
    mkdir -p "$INSTALL_PATH"
    bash "$RUN_PACKAGE" --install-path="$INSTALL_PATH"
    VENDOR_DIR="$(cd "$INSTALL_PATH" && pwd)/vendors/$VENDOR"
    echo "installed into $VENDOR_DIR; make it visible to CANN and MindSpore with:"
    echo "    export ASCEND_CUSTOM_OPP_PATH=$VENDOR_DIR:\${ASCEND_CUSTOM_OPP_PATH:-}"
    echo "    export LD_LIBRARY_PATH=$VENDOR_DIR/op_api/lib:\${LD_LIBRARY_PATH:-}"
else
    bash "$RUN_PACKAGE"
    echo "installed into \$ASCEND_OPP_PATH/vendors/$VENDOR (registered in vendors/config.ini)"
fi
