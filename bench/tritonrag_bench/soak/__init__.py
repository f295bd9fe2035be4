"""`make soak`: mixed hostile and heavy traffic against a real tritonserver, then checks that nothing leaked or hung.

    python -m tritonrag_bench.soak                      # 2 minutes against a server it starts itself
    python -m tritonrag_bench.soak --minutes 20         # a full run (make soak SOAK_ARGS="--minutes 20")
    python -m tritonrag_bench.soak --url 127.0.0.1:8001 --http-url 127.0.0.1:8000 \
        --metrics-url http://127.0.0.1:8002/metrics     # attach to a running server (make serve)

Workers send a weighted mix through `rag` and the public `llm` model (gRPC streams and HTTP
`generate` / `generate_stream`): normal streams, client cancels (gRPC stream cancel) and
disconnects (an HTTP stream closed mid-answer), and the bad inputs the server must refuse
(README, Security and limits). A timeline adds chaos: bursts past the router's `max_streams`,
a canary weight flip and back (the canary CLI, on the soak's own weights file), and one
SIGKILL of a generator version's Python stub, after which the traffic is moved to the other
version (`canary promote`), as an operator would.

Every call carries a Triton timeout (`--timeout`, 60 s), as a careful client's does: the `llm` router
bounds its generator stream by it plus 30 s, so a generator stub that dies mid-stream cannot keep a
call open. The soak waits for each call up to its own deadline (`--deadline`, 180 s): one still open
then is HUNG. At the end the soak waits for the engine to drain and checks, from the generator's
/metrics, that no sequence runs or waits and no KV block is in use, that the server and every
model are ready, and that a plain `llm` and `rag` request are answered. It prints counts by scenario and outcome code, TTFT and
total latency percentiles, and writes `result.json` and `result.md` under `--out`. Exit status:
0 when every check passed, 1 when one failed (leak, hang, untyped error, not ready), 2 when the
server died or never started.

Outcome codes: OK, CANCELLED and DISCONNECTED (the client's own doing), INVALID_ARG, UNAVAILABLE,
INTERNAL, STUB_DEAD (Triton's "Stub process ... is not healthy"), TRITON_JSON (Triton's own JSON
parser refusing an HTTP body before any model runs: HTTP 500), HUNG. A gRPC stream's error
carries its message only (2.51 sends no code on a stream), so there the code is read from the
words our stages and Triton write, as the router does.
"""
