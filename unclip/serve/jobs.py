"""One model worker and a bounded job queue: submit, poll progress, cancel, collect PNGs.

Jobs run one at a time in a worker thread that owns the pipeline. A job is a function of the
pipeline returning PIL images; its sampling steps are counted through `sampling.step_hook`, which
also stops a cancelled job at its next step. Finished jobs are kept (newest `keep` of them) for
their results to be fetched.
"""

import io
import itertools
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    pass


class Cancelled(Exception):
    pass


@dataclass
class Job:
    kind: str
    run: Callable  # pipe -> list of PIL images
    parameters: dict  # written into every PNG
    total_steps: int  # sampling steps expected, for progress
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    status: str = "queued"  # queued | running | done | failed | cancelled
    steps_done: int = 0
    error: str | None = None
    images: list = field(default_factory=list)  # PNG bytes, with their parameters
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return min(self.steps_done / max(self.total_steps, 1), 0.99)

    def eta_seconds(self) -> float | None:
        if self.status != "running" or not self.steps_done:
            return None
        rate = (time.time() - self.started) / self.steps_done
        return max(self.total_steps - self.steps_done, 0) * rate

    def public(self, position: int | None = None) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "progress": round(self.progress, 4),
                "eta_seconds": self.eta_seconds(), "queue_position": position, "error": self.error,
                "images": [f"/v1/jobs/{self.id}/images/{i}.png" for i in range(len(self.images))],
                "parameters": self.parameters}


class Worker:
    def __init__(self, pipe, max_queue: int = 8, keep: int = 64):
        self.pipe = pipe
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.jobs: dict[str, Job] = {}
        self.keep = keep
        self.current: Job | None = None
        self.lock = threading.Lock()
        self.completed = itertools.count()
        self.thread = threading.Thread(target=self._loop, name="unclip-model-worker", daemon=True)
        self.thread.start()

    # -- client side --------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self.lock:
            try:
                self.queue.put_nowait(job)
            except queue.Full:
                raise QueueFull from None
            self.jobs[job.id] = job
            self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        if job.status != "queued":
            return None
        with self.queue.mutex:
            waiting = list(self.queue.queue)
        return next((i for i, j in enumerate(waiting) if j is job), None)

    def cancel(self, job: Job) -> None:
        """A queued job leaves the queue at once (its slot is free); a running one stops at its next step."""
        with self.lock:  # the worker takes a job off the queue and marks it running under the same lock
            job.cancel_requested = True
            if job.status != "queued":
                return
            with self.queue.mutex:
                if job in self.queue.queue:
                    self.queue.queue.remove(job)
                    self.queue.not_full.notify()
            job.status = "cancelled"
            job.finished = time.time()
            job.done.set()

    def queued(self) -> int:
        return self.queue.qsize()

    # -- the worker thread --------------------------------------------------------------------
    def _loop(self) -> None:
        from unclip.sampling import step_hook

        while True:
            job = self.queue.get()
            with self.lock:
                if job.status == "cancelled":
                    continue
                self.current, job.status, job.started = job, "running", time.time()

            def hook(stage, step, steps, job=job):
                if job.cancel_requested:
                    raise Cancelled
                job.steps_done += 1

            try:
                with step_hook(hook):
                    images = job.run(self.pipe)
                job.images = [_png(im, job.parameters) for im in images]
                job.status = "done"
                next(self.completed)
            except Cancelled:
                job.status = "cancelled"
            except Exception as e:  # a failed job must not take the worker down
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            finally:
                job.finished = time.time()
                self.current = None
                job.done.set()

    def _evict(self) -> None:
        finished = [j for j in self.jobs.values() if j.done.is_set()]
        for j in sorted(finished, key=lambda j: j.created)[: max(len(finished) - self.keep, 0)]:
            del self.jobs[j.id]


def _png(image, parameters: dict) -> bytes:
    from unclip.images import save_png

    buf = io.BytesIO()
    save_png(image, buf, parameters)
    return buf.getvalue()
