"""One router per endpoint, as in Triton's own OpenAI frontend (`frontend/fastapi/routers`)."""
