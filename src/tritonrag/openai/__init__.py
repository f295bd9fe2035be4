"""An OpenAI-compatible HTTP API and a web page in front of the Triton repository.

Layout (as Triton's own OpenAI frontend): `app` (FastAPI app and CLI), `routers/` (one per endpoint),
`protocol` (request and response bodies), `bridge` (tritonclient asyncio gRPC streaming),
`triton_map` (the Triton names and tensors: the one file that knows the repository's interface),
`generation` (sampling keys and answers shared by chat and completions), `streaming` (server-sent
events that cancel on disconnect), `errors`, `auth`, `tokenizing`, `sources`, `static/` (the page).
"""
