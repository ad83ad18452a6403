"""Background jobs for the live features: one worker thread per device, each consuming its own
FIFO queue (measured on the project's machines: Dash's background callbacks fork a process per job,
which reloads the model and cannot use CUDA after the parent initialised it).

    queue = JobQueue()
    job_id = queue.submit("trace", run, device="cuda", label="What color is ...?")
    queue.status(job_id)   # {"state": "queued", "position": 1, ...} -> "running" -> "done" / "error" / "cancelled"
    queue.cancel(job_id)   # queued: removed at once; running: its should_stop() turns true
    queue.result(job_id)   # what run returned, once done

`run(ctx)` gets a JobContext: `ctx.progress(phase, done, total)` reports progress (tracer's
on_progress signature), `ctx.should_stop()` / `ctx.check()` see a cancel request. Whatever it
raises is reported in the job's status (state "error", a message), never raised in the caller
or the worker. Jobs of one device run one after another, so model calls on a device are
serialised; jobs of different devices run in parallel. No Dash, no torch in this module.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from tracer.errors import InputError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "queued", "running", "done", "error", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, ERROR, CANCELLED)


class JobCancelled(RuntimeError):
    """Raised by JobContext.check() when the job was asked to stop."""


@dataclass
class Job:
    id: str
    kind: str
    device: str
    fn: Callable[["JobContext"], Any] = field(repr=False)
    label: str = ""
    meta: dict = field(default_factory=dict)  # anything the submitter wants back with the status
    state: str = QUEUED
    phase: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = field(default=None, repr=False)
    error: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    delivered: bool = False  # set by whoever consumed the result (e.g. opened the traced graph)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)


class JobContext:
    """What a running job sees: progress reporting and cancellation."""

    def __init__(self, job: Job, lock: threading.Lock):
        self._job, self._lock = job, lock

    @property
    def job_id(self) -> str:
        return self._job.id

    def progress(self, phase: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            self._job.phase, self._job.done, self._job.total = str(phase), int(done), int(total)

    def note(self, message: str) -> None:
        with self._lock:
            self._job.message = str(message)

    def should_stop(self) -> bool:
        return self._job.cancel_event.is_set()

    def check(self) -> None:
        if self.should_stop():
            raise JobCancelled("cancelled")


def _is_cancellation(err: BaseException) -> bool:
    if isinstance(err, JobCancelled):
        return True
    # tracer.attribution.attribute.AttributionCancelled, without importing tracer (torch) here
    return type(err).__name__ == "AttributionCancelled"


def describe_error(err: BaseException) -> str:
    """A one-line message for the browser (tracer's own errors are written for users)."""
    text = str(err).strip() or type(err).__name__
    user_errors = ("ImageError", "TargetError", "PromptError", "ValueError", "GraphFormatError", "LiveError")
    if type(err).__name__ in user_errors or isinstance(err, InputError):
        return text
    return f"{type(err).__name__}: {text}"


class JobQueue:
    """FIFO queues, one worker thread per device (started on the device's first job)."""

    def __init__(self, keep: int = 200):
        self.keep = keep  # finished jobs remembered (status and result), oldest dropped first
        self._lock = threading.Lock()
        self._wake: dict[str, threading.Condition] = {}
        self._waiting: dict[str, deque[Job]] = {}
        self._running: dict[str, Job | None] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._closed = False

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: Callable[[JobContext], Any], device: str = "cpu", label: str = "",
               meta: dict | None = None) -> str:
        job = Job(uuid.uuid4().hex, str(kind), str(device), fn, label, dict(meta or {}))
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            self._jobs[job.id] = job
            self._trim()
            if device not in self._wake:
                self._wake[device] = threading.Condition(self._lock)
                self._waiting[device] = deque()
                self._running[device] = None
                worker = threading.Thread(target=self._work, args=(device,), name=f"vlmc-worker-{device}", daemon=True)
                self._workers[device] = worker
                worker.start()
            self._waiting[device].append(job)
            self._wake[device].notify()
        return job.id

    def _trim(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in FINISHED]
        for k in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[k]

    # ------------------------------------------------------------------ the worker
    def _work(self, device: str) -> None:
        wake = self._wake[device]
        while True:
            with self._lock:
                while not self._waiting[device] and not self._closed:
                    wake.wait()
                if self._closed:
                    return
                job = self._waiting[device].popleft()
                job.state, job.started = RUNNING, time.time()
                self._running[device] = job
            ctx = JobContext(job, self._lock)
            try:
                result = job.fn(ctx)
            except BaseException as err:  # noqa: BLE001: reported in the status, never raised
                with self._lock:
                    if _is_cancellation(err):
                        job.state, job.message = CANCELLED, "cancelled"
                    else:
                        job.state, job.error = ERROR, describe_error(err)
                        job.message = job.error
                if job.state == ERROR:
                    log.warning("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            else:
                with self._lock:
                    job.result, job.state = result, DONE
            finally:
                with self._lock:
                    job.finished = time.time()
                    self._running[device] = None
                    self._trim()

    # ------------------------------------------------------------------ asking
    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if isinstance(job_id, str) else None

    def status(self, job_id: str | None) -> dict | None:
        """JSON-ready status, or None for an unknown id. position: 1 for the next job to run on
        its device, 2 for the one after it...; 0 if not waiting."""
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None:
                return None
            position = 0
            if job.state == QUEUED:
                position = next((k + 1 for k, w in enumerate(self._waiting.get(job.device, ())) if w.id == job.id), 0)
            return {"id": job.id, "kind": job.kind, "state": job.state, "position": position, "phase": job.phase,
                    "done": job.done, "total": job.total, "message": job.message, "error": job.error,
                    "label": job.label, "meta": dict(job.meta), "device": job.device}

    def result(self, job_id: str | None) -> Any:
        job = self.get(job_id)
        return job.result if job is not None and job.state == DONE else None

    def mark_delivered(self, job_id: str) -> bool:
        """True the first time only: for results that must be consumed once (open a graph)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != DONE or job.delivered:
                return False
            job.delivered = True
            return True

    def cancel(self, job_id: str | None) -> bool:
        """Cancel a queued job (removed at once) or ask a running one to stop (it stops at its next
        check). False if the job is unknown or already finished."""
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None or job.state in FINISHED:
                return False
            job.cancel_event.set()
            if job.state == QUEUED:
                try:
                    self._waiting[job.device].remove(job)
                except ValueError:
                    pass
                job.state, job.message, job.finished = CANCELLED, "cancelled before it started", time.time()
            return True

    def devices(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def workers(self) -> dict[str, threading.Thread]:
        with self._lock:
            return dict(self._workers)

    def wait(self, job_id: str, timeout: float = 60.0) -> dict | None:
        """Block until the job finished (tests and scripts); its status."""
        end = time.time() + timeout
        while time.time() < end:
            st = self.status(job_id)
            if st is None or st["state"] in FINISHED:
                return st
            time.sleep(0.02)
        raise TimeoutError(f"job {job_id} still {self.status(job_id)['state']} after {timeout} s")

    def shutdown(self) -> None:
        """Stop the workers after their current job (queued jobs are cancelled)."""
        with self._lock:
            self._closed = True
            for device, waiting in self._waiting.items():
                for job in waiting:
                    job.cancel_event.set()
                    job.state, job.message, job.finished = CANCELLED, "the app is shutting down", time.time()
                waiting.clear()
                self._wake[device].notify_all()
            for job in self._running.values():
                if job is not None:
                    job.cancel_event.set()


def status_text(status: dict | None) -> str:
    """'queued (position 2)', 'running: features 120/400', 'done', 'error: ...' for a status."""
    if not status:
        return ""
    state = status["state"]
    if state == QUEUED:
        return f"queued (position {status['position']})" if status.get("position") else "queued"
    if state == RUNNING:
        phase = status.get("phase") or "running"
        if status.get("total"):
            return f"{phase} {status['done']}/{status['total']}"
        return phase
    if state == ERROR:
        return f"error: {status.get('error') or status.get('message')}"
    if state == CANCELLED:
        return "cancelled"
    if state == DONE:
        return "done"
    return state
