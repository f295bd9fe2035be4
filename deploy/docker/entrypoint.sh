#!/usr/bin/env bash
# Container entrypoint (deploy/docker/Dockerfile.{gpu,cpu}): prepare what depends on the node, then exec
# tritonserver, so that it is PID 1 and gets the kubelet's SIGTERM itself. tritonserver 2.51 on SIGTERM
# (measured): its HTTP endpoint closes at once (readiness fails), gRPC keeps serving, in-flight non-streaming
# requests finish, and open connections and requests get up to TRITONRAG_EXIT_TIMEOUT seconds
# (--exit-timeout-secs) before the models unload. Streams of the decoupled generator are not waited for:
# the pod's preStop hook drains them first (python -m tritonrag.triton.drain, deploy/k8s).
#
#   tritonrag-entrypoint [server args...]   tritonserver with the model repository (the image's variant)
#   tritonrag-entrypoint openai [args...]   the OpenAI-compatible front end against tritonserver's gRPC
#
# The canary split: the router reads $TRITONRAG_CANARY_FILE when it is set (a mounted ConfigMap, deploy/k8s).
set -euo pipefail

: "${TRITONRAG_HOME:=/opt/tritonrag}"
: "${TRITONRAG_ARTIFACTS:=$TRITONRAG_HOME/artifacts}"
: "${TRITONRAG_VARIANT:=cpu}"
: "${TRITONRAG_EXIT_TIMEOUT:=30}"
export TRITONRAG_ARTIFACTS
cd "$TRITONRAG_HOME"

log() { echo "tritonrag-entrypoint: $*" >&2; }

# TensorRT engines for this node's GPU when TRITONRAG_BUILD_ENGINES=1, cached in $TRITONRAG_ARTIFACTS/engines
# (a volume): the first start builds them (minutes), later starts find them in the cache. Off by default: the
# shipped model configs serve torch and ONNX Runtime; set it with `runtime: tensorrt` in a config. A failed
# build is logged and does not stop the server: each model falls back from its runtime, the reason logged.
build_engines() {
    [[ "${TRITONRAG_BUILD_ENGINES:-0}" == 1 ]] || return 0
    if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        log "no CUDA GPU visible: TensorRT engines not built"
        return 0
    fi
    python3 build/build_engines.py --backend tensorrt || log "TensorRT engines not built (see above)"
}

serve_gpu() {
    build_engines
    # As TritonServer does (README, Security and limits): the admin APIs behind a key
    # ($TRITONRAG_ADMIN_KEY, else random: locked); the llm router reaches the generator on this gRPC port.
    new_key() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
    export TRITONRAG_GRPC_URL="${TRITONRAG_GRPC_URL:-127.0.0.1:8001}"
    local admin="shared-memory,model-repository,trace,logging:tritonrag-admin-key=${TRITONRAG_ADMIN_KEY:-$(new_key)}"
    local restricted=(--http-restricted-api="$admin" --grpc-restricted-protocol="$admin")
    # Inference behind its own key when $TRITONRAG_INFERENCE_KEY is set; the router's stub sends it (same env).
    if [[ -n "${TRITONRAG_INFERENCE_KEY:-}" ]]; then
        local inference="inference:tritonrag-inference-key=$TRITONRAG_INFERENCE_KEY"
        restricted+=(--http-restricted-api="$inference" --grpc-restricted-protocol="$inference")
    fi
    exec tritonserver \
        --model-repository="$TRITONRAG_HOME/model_repository" \
        --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
        --allow-metrics=true --allow-gpu-metrics=true --allow-cpu-metrics=true \
        --exit-timeout-secs="$TRITONRAG_EXIT_TIMEOUT" \
        "${restricted[@]}" \
        "$@"
}

serve_cpu() {
    # The paged decode attention op, compiled for this node's CPU (~40 s once; cached by CPU fingerprint).
    python3 -m tritonrag.engine.runners.paged_attention || log "paged decode op not built: decode uses torch"
    # The tritonserver of the nvidia-pytriton wheel, with the backend directory and environment `make serve`
    # uses (tritonrag.triton.server), on ports 8000-8002 of every interface; TritonServer.exec becomes it.
    exec python3 -c 'import sys; from tritonrag.triton.server import TritonServer
TritonServer(bind_address="0.0.0.0", extra_args=sys.argv[1:]).exec()' \
        "--exit-timeout-secs=$TRITONRAG_EXIT_TIMEOUT" "$@"
}

serve_openai() {
    # API keys: TRITONRAG_API_KEYS (comma-separated; from a Secret in deploy/k8s). Ready once tritonserver is.
    exec python3 -m tritonrag.openai \
        --triton-url "${TRITONRAG_TRITON_URL:-127.0.0.1:8001}" --host 0.0.0.0 --port 9000 \
        "$@"
}

if [[ "${1:-}" == openai ]]; then
    shift
    serve_openai "$@"
fi
case "$TRITONRAG_VARIANT" in
    gpu) serve_gpu "$@" ;;
    cpu) serve_cpu "$@" ;;
    *) log "TRITONRAG_VARIANT must be gpu or cpu, got '$TRITONRAG_VARIANT'"; exit 2 ;;
esac
