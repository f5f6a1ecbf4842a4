"""Dynamic batching for one model: concurrent requests share one ``Pipeline`` batch.

A worker thread per model takes up to ``max_batch`` queued jobs, waiting at most ``max_wait_ms``
for the batch to fill, runs ``Pipeline.start`` once for all of them and then steps
``Pipeline.decode_steps``. Each row streams its tokens as they come, and a row that is done (its
end token or its own ``max_tokens``) is answered at once, without waiting for the rest of the
batch; its place stays in the batch's tensors until the batch ends (the decode graph has a fixed
batch per step, so shrinking it mid-batch would re-pad every cache). Rows whose clients went away
are dropped, and a batch whose remaining rows are all gone stops decoding. The queue is bounded:
``submit`` raises ``QueueFull`` and the server answers 503.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time

import numpy as np

from ..errors import AccmUserError


class QueueFull(Exception):
    pass


@dataclasses.dataclass(eq=False)
class Job:
    image: object
    prompt: str
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue  # ("token", text) … then ("done", answer, finish_reason) or ("error", status, message)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: bool = False
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None
    ids: list = dataclasses.field(default_factory=list)
    sent: str = ""

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class ModelWorker:
    def __init__(self, name: str, pipeline, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64,
                 metrics=None):
        self.name, self.pipe = name, pipeline
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.metrics = metrics
        self.queue: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=f"accm-batcher-{name}", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- queue
    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.queue) >= self.max_queue:
                raise QueueFull
            self.queue.append(job)
            self._depth()
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: free its queue slot, or drop its row from the running batch."""
        job.cancelled.set()
        with self.cond:
            if job in self.queue:
                self.queue.remove(job)
                self._depth()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(len(self.queue))

    def _take(self) -> list[Job]:
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self.queue) < self.max_batch and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            batch = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
            self._depth()
        return [j for j in batch if not j.cancelled.is_set()]

    def _loop(self) -> None:
        while not self.stopping:
            batch = self._take()
            if batch:
                try:
                    self._run(batch)
                except AccmUserError as e:
                    self._fail(batch, 400, str(e))
                except Exception as e:  # a bug or a broken bundle: answer 500 and keep serving
                    self._fail(batch, 500, f"{e.__class__.__name__}: {e}")

    @staticmethod
    def _fail(batch: list[Job], status: int, message: str) -> None:
        for job in batch:
            if not job.finished:
                job.finished = True
                job.emit("error", status, message)

    # ---------------------------------------------------------------- one batch
    def _run(self, batch: list[Job]) -> None:
        pipe = self.pipe
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(len(batch))
        run = pipe.start([j.image for j in batch], [j.prompt for j in batch], [j.max_tokens for j in batch])
        eos = pipe.tokens["eos_token_id"]
        for tokens, fresh in pipe.decode_steps(run):
            now = time.monotonic()
            for b in np.flatnonzero(fresh):
                job = batch[b]
                if job.cancelled.is_set() or job.finished:
                    continue
                self._token(job, int(tokens[b]), eos, now)
                if run.done[b]:
                    job.finished = True
                    reason = "stop" if int(tokens[b]) == eos else "length"
                    job.emit("done", pipe.answer(run, int(b)), reason)
                    if self.metrics is not None:
                        self.metrics.generated.labels(self.name).inc(len(job.ids))
            if all(j.finished or j.cancelled.is_set() for j in batch):
                break
        elapsed = sum(run.decode_ms) / 1000.0
        if self.metrics is not None and elapsed > 0:
            self.metrics.tokens_per_second.labels(self.name).set(sum(map(len, run.generated)) / elapsed)

    def _token(self, job: Job, token: int, eos: int, now: float) -> None:
        m = self.metrics
        if job.first_token_at is None:
            job.first_token_at = now
            if m is not None:
                m.ttft.labels(self.name).observe(now - job.enqueued)
        elif m is not None:
            m.token_latency.labels(self.name).observe(now - job.last_token_at)
        job.last_token_at = now
        if token == eos:
            return
        job.ids.append(token)
        text = self.pipe.tokenizer.decode(job.ids, skip_special_tokens=True).lstrip()
        delta, job.sent = text[len(job.sent):], text
        if delta:
            job.emit("token", delta)
