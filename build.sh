#!/usr/bin/env bash
# vared2's one entry point on a fresh machine.
#   ./build.sh [OPTIONS]  the main job on the embedded default (ONNX Runtime, CPU): export, parity, engines, bench
#       --checkpoint DIR  the checkpoint to deploy (default: demo/checkpoint)
#       --backend onnxruntime|tensorrt   --fp16 (TensorRT)   --max-batch N (default 8)
#       --out DIR         ONNX in DIR/onnx/NAME, engines in DIR/engines/NAME (default: artifacts)
#       --name NAME       the deployment's folder name (default: the checkpoint's)   --skip-bench
#   ./build.sh test [PYTEST ARGS]   lint, type-check and the whole test suite, then (without PYTEST ARGS) the
#                                   server tier (what CI runs)
#   ./build.sh triton-test [PYTEST ARGS]   the server tier: a real tritonserver on 127.0.0.1, in .venv-triton
#   ./build.sh gpu-check [--clips N]   the GPU acceptance: GPU tests, the demo on TensorRT in fp32, fp16, int8
# It creates its own virtual environment in .venv (or $VARED2_VENV, with $PYTHON) and installs everything there;
# the server tier gets its own, .venv-triton (or $VARED2_TRITON_VENV): its Triton Python backend needs numpy<2.
# Relative paths in the options are taken from the directory you run it in.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
VENV=${VARED2_VENV:-$ROOT/.venv}
TRITON_VENV=${VARED2_TRITON_VENV:-$ROOT/.venv-triton}
PY=${PYTHON:-python3}

say() {  # bold only on a terminal: CI logs and redirected output get plain text
    if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}
die() { printf 'build.sh: %s\n' "$*" >&2; exit 2; }

make_venv() {  # DIR WHAT PIP-ARGS…: create DIR and install PIP-ARGS there, again only when they or pyproject.toml change
    local venv=$1 what=$2 stamp want
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the virtual environment in $venv"
        "$PY" -m venv "$venv" || die "could not create a virtual environment with $PY (is python3-venv installed?)"
    fi
    stamp="$venv/.vared2-installed"
    want=$( (cat "$ROOT/pyproject.toml"; printf '%s\n' "$@") | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing $what"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet "$@"
        echo "$want" > "$stamp"
    fi
}

ensure_venv() {
    make_venv "$VENV" "vared2 and its dependencies (torch 2.14.1, torchvision 0.29.1, onnxruntime, …)" -e "$ROOT[dev]"
}

ensure_test_tools() {
    # TensorRT's published API, per version of the matrix (docs/plugins.md), for the test that checks every
    # TensorRT name the code uses and for mypy. Only read as files, never imported, so one fixed x86-64 CPython 3.11
    # wheel serves every host (Jetson's aarch64, another Python). --no-deps and a folder of their own each: their
    # dependencies are TensorRT itself, and a stub-only `tensorrt` package in site-packages would look like a real
    # installation.
    local fixed=(--no-deps --only-binary=:all: --python-version 3.11
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64)
    if [ ! -f "$VENV/tensorrt-api/tensorrt/__init__.pyi" ]; then
        "$VENV/bin/python" -m pip install --quiet "${fixed[@]}" --target "$VENV/tensorrt-api" \
            tensorrt-stubs==10.13.0.35.1 tensorrt-cu12-bindings==10.13.0.35
    fi
    local version wheel
    for wheel in 10.3:tensorrt-cu12-bindings==10.3.0 10.9:tensorrt-cu12-bindings==10.9.0.34 \
        11.4:tensorrt-cu13-bindings==11.4.0.106; do
        version=${wheel%%:*}
        if [ ! -f "$VENV/tensorrt-api-$version/tensorrt_bindings/__init__.py" ]; then
            "$VENV/bin/python" -m pip install --quiet "${fixed[@]}" --target "$VENV/tensorrt-api-$version" "${wheel#*:}"
        fi
    done
    # The 10.13 stubs as mypy can read them, on its path: the TensorRT code is checked by signature.
    if [ ! -f "$VENV/tensorrt-typing/tensorrt/__init__.pyi" ]; then
        "$VENV/bin/python" "$ROOT/tests/tensorrt_typing.py" "$VENV/tensorrt-api" "$VENV/tensorrt-typing"
    fi
    export MYPYPATH="$VENV/tensorrt-typing${MYPYPATH:+:$MYPYPATH}"
}

run_tests() {
    cd "$ROOT"  # ruff, mypy and pytest read the project's configuration and tests from the repository
    say "ruff"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    say "mypy"
    "$VENV/bin/mypy" -p vared2  # the stages are reached through the committed links vared2/<stage>
    say "pytest"
    "$VENV/bin/python" -m pytest "$@"
}

ensure_triton_venv() {
    # No torch here: the tests build toy engines (tests/ort_toy.py) with vared2's ONNX Runtime builder, which needs
    # onnx and the graph passes' onnx-ir and onnxscript (the export extra without the training stack).
    make_venv "$TRITON_VENV" "the server tier (nvidia-pytriton 0.7.0's tritonserver, tritonclient, numpy<2)" \
        -e "$ROOT[triton]" "pytest>=8" "onnx>=1.16" "onnx-ir>=1.1" "onnxscript>=0.7.2"
}

run_triton_tests() {
    cd "$ROOT"
    say "server tier (tritonserver on 127.0.0.1)"
    "$TRITON_VENV/bin/python" -m pytest -m server tests/test_serve_server.py "$@"
}

main_job() {
    "$VENV/bin/python" -m vared2.pipeline "$@"
}

cmd=${1:-}
case "$cmd" in
    test)
        shift; ensure_venv; ensure_test_tools; run_tests "$@"
        if [ $# -eq 0 ]; then ensure_triton_venv; run_triton_tests; fi ;;
    triton-test) shift; ensure_triton_venv; run_triton_tests "$@" ;;
    gpu-check)
        shift
        # Said before minutes of installing: vared2.gpu_check repeats this and also checks TensorRT.
        command -v nvidia-smi >/dev/null ||
            die "gpu-check: cannot run: no NVIDIA GPU on this machine (nvidia-smi not found). Nothing was checked."
        ensure_venv; "$VENV/bin/python" -m vared2.gpu_check "$@" ;;
    -h|--help|help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) ensure_venv; main_job "$@" ;;
esac
