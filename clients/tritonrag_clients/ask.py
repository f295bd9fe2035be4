"""Ask the RAG server a question and print the answer token by token, then its sources.

python -m tritonrag_clients.ask "How do I open a file?" [--url 127.0.0.1:8001] [--top-k 3]

When the server's inference is locked, the key comes from $TRITONRAG_INFERENCE_KEY (never an argument).
"""

from __future__ import annotations

import argparse
import sys
import time

from tritonclient.utils import InferenceServerException

from tritonrag_clients.streaming import StreamingClient, rag_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address")
    parser.add_argument("--model", default="rag")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--root-cert", default=None, help="the server's gRPC speaks TLS: its root certificate")
    args = parser.parse_args(argv)

    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    start = time.monotonic()
    first = None
    sources = None
    with StreamingClient(args.url, args.root_cert) as client:
        try:
            for event in client.stream(args.model, rag_inputs(args.question, args.top_k, sampling)):
                if event.error is not None:
                    raise event.error
                if event.text and first is None:
                    first = event.time - start
                sources = sources or event.sources
                print(event.text, end="", flush=True)
        except InferenceServerException as exc:  # a request's error, or the stream refused (the inference key)
            print(f"\nerror: {exc.message()}", file=sys.stderr)
            return 1
    print()
    if sources:
        print("\nSources:")
        for number, source in enumerate(sources, start=1):
            print(f"  [{number}] {source['title']}  ({source['id']}, score {source['score']})")
    total = time.monotonic() - start
    print(f"\n(first token after {first or 0:.2f} s, done in {total:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
