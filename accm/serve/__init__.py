"""accm-serve: an OpenAI-compatible chat-completions server over accm bundles (FastAPI, uvicorn),
with dynamic batching per model and Ray Serve replicas when one machine is not enough."""
