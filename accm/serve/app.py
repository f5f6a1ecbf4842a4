"""The FastAPI app: OpenAI chat completions (streaming or not), models, health, metrics.

FastAPI reads the route signatures' annotations at run time, so ``Request`` is imported at module
level (this module is the ``[serve]`` extra's; nothing else imports it).

Bad input is an OpenAI-style one-line JSON error: 400 (unreadable or non-image data, bombs,
empty or over-long prompts, remote URLs, files outside ``--allow-files``), 401 (missing or wrong
API key), 404 (unknown model), 413 (body over ``--max-body-mb``), 503 with ``Retry-After``
(queue full), 504 (per-request timeout). A client that disconnects frees its queue slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .batcher import Job, ModelWorker, QueueFull
from .metrics import Metrics
from .requests import ApiError, parse_chat


@dataclasses.dataclass
class ServeSettings:
    bundles: dict[str, str] = dataclasses.field(default_factory=dict)  # model name → bundle directory
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    timeout_s: float = 60.0
    max_body_mb: float = 20.0
    allow_files: str | None = None
    api_key: str | None = None
    max_tokens_limit: int = 512
    default_max_tokens: int = 16
    threads: int | None = None
    provider: str = "cpu"


class Server:
    """What one process (or one Ray replica) serves: a batching worker per model, and metrics."""

    def __init__(self, settings: ServeSettings):
        from ..runtime.pipeline import Pipeline

        self.settings = settings
        self.metrics = Metrics()
        self.workers = {
            name: ModelWorker(name, Pipeline(path, provider=settings.provider, threads=settings.threads),
                              settings.max_batch, settings.max_wait_ms, settings.max_queue, self.metrics)
            for name, path in settings.bundles.items()
        }
        self.replica = f"{os.getpid()}"

    def describe(self, name: str) -> dict:
        m = self.workers[name].pipe.manifest
        return {"id": name, "object": "model", "created": 0, "owned_by": "accm",
                "accm": {"precision": m["precision"], "vision_keep": m["pruning"]["vision_keep"],
                         "schedule": m["pruning"]["schedule"], "layer_counts": m["pruning"]["layer_counts"],
                         "accm": "accm" in m, "source_model": m["source_model"]["name"]}}

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()


def _error(e: ApiError):
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _completion(model: str, answer, reason: str, replica: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": reason}],
        "usage": _usage(answer),
        "accm": _extension(answer, replica),
    }


def _usage(answer) -> dict:
    c = answer.counts
    return {"prompt_tokens": c["prompt_tokens"], "completion_tokens": c["generated"],
            "total_tokens": c["prompt_tokens"] + c["generated"], "image_tokens_kept": c["image_tokens_kept"]}


def _extension(answer, replica: str) -> dict:
    return {"times_ms": answer.timings_ms, "image_tokens_kept": answer.counts["image_tokens_kept"],
            "llm_image_tokens_per_layer": answer.counts["llm_image_tokens_per_layer"],
            "caption": answer.caption, "replica": replica}


def _chunk(cid: str, model: str, delta: dict, reason: str | None = None, **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}
    return f"data: {json.dumps(body)}\n\n"


def build_app(get_server: Callable[[], Server]):
    """The app; ``get_server`` returns this process's Server (one per process or Ray replica)."""
    app = FastAPI(title="accm-serve", docs_url=None, redoc_url=None)

    def authorise(request: Request, server: Server) -> None:
        key = server.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer …)", kind="authentication_error",
                           code="invalid_api_key")

    async def read_json(request: Request, limit: int):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit >> 20} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body over {limit >> 20} MB")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    async def watch_disconnect(request: Request, worker: ModelWorker, job: Job) -> None:
        while not job.finished:
            if await request.is_disconnected():
                worker.cancel(job)
                return
            await asyncio.sleep(0.05)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        server = get_server()
        s = server.settings
        model = "?"
        try:
            authorise(request, server)
            body = await read_json(request, int(s.max_body_mb * 2**20))
            req = await asyncio.to_thread(parse_chat, body, Path(s.allow_files) if s.allow_files else None,
                                          s.max_tokens_limit, s.default_max_tokens)
            model = req.model or next(iter(server.workers))
            if model not in server.workers:
                raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", "model",
                               "model_not_found")
            worker = server.workers[model]
            job = Job(req.image, req.prompt, req.max_tokens, asyncio.get_running_loop(), asyncio.Queue())
            try:
                worker.submit(job)
            except QueueFull:
                raise ApiError(503, "the server is busy: too many queued requests; retry shortly",
                               kind="server_error", code="queue_full") from None
        except ApiError as e:
            server.metrics.requests.labels(model, str(e.status)).inc()
            return _error(e)
        watcher = asyncio.create_task(watch_disconnect(request, worker, job))
        if req.stream:
            return StreamingResponse(stream(server, model, worker, job, req.include_usage, watcher),
                                     media_type="text/event-stream")
        try:
            event = await asyncio.wait_for(_final(job), timeout=s.timeout_s)
        except asyncio.TimeoutError:
            worker.cancel(job)
            event = ("error", 504, f"no answer within {s.timeout_s:g} s")
        finally:
            watcher.cancel()
        if event[0] == "error":
            server.metrics.requests.labels(model, str(event[1])).inc()
            return _error(ApiError(event[1], event[2], kind="server_error" if event[1] >= 500 else
                                   "invalid_request_error"))
        server.metrics.requests.labels(model, "200").inc()
        return JSONResponse(_completion(model, event[1], event[2], server.replica))

    async def _final(job: Job):
        while True:
            event = await job.events.get()
            if event[0] != "token":
                return event

    async def stream(server: Server, model: str, worker: ModelWorker, job: Job, include_usage: bool, watcher):
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        deadline = time.monotonic() + server.settings.timeout_s
        yield _chunk(cid, model, {"role": "assistant", "content": ""})
        code = "200"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                event = await asyncio.wait_for(job.events.get(), timeout=remaining)
                if event[0] == "token":
                    yield _chunk(cid, model, {"content": event[1]})
                elif event[0] == "done":
                    extra = {"accm": _extension(event[1], server.replica)}
                    if include_usage:
                        extra["usage"] = _usage(event[1])
                    yield _chunk(cid, model, {}, event[2], **extra)
                    break
                else:
                    code = str(event[1])
                    yield f"data: {json.dumps(ApiError(event[1], event[2], kind='server_error').body())}\n\n"
                    break
        except asyncio.TimeoutError:
            worker.cancel(job)
            code = "504"
            yield f"data: {json.dumps(ApiError(504, 'no answer in time', kind='server_error').body())}\n\n"
        finally:
            watcher.cancel()
            if job.finished or code != "200":
                server.metrics.requests.labels(model, code).inc()
            else:  # the client went away mid-stream
                worker.cancel(job)
                server.metrics.requests.labels(model, "499").inc()
        yield "data: [DONE]\n\n"

    @app.get("/v1/models")
    async def models():
        server = get_server()
        return {"object": "list", "data": [server.describe(n) for n in server.workers]}

    @app.get("/health")
    async def health():
        server = get_server()
        return {"status": "ok", "models": list(server.workers), "replica": server.replica,
                "queue": {n: len(w.queue) for n, w in server.workers.items()}}

    @app.get("/metrics")
    async def metrics():
        data, ctype = get_server().metrics.exposition()
        return Response(content=data, media_type=ctype)

    return app
