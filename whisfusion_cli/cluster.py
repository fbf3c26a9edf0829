"""Many GPUs, many machines: one transcription job spread over Ray actors, one model replica each.

Each replica (a Ray actor: `num_gpus=1` where the cluster has GPUs, else `num_cpus=1` with torch
threads set to its share of the cores) loads the model once, as the CLI does, and transcribes one
file per call through `transcribe_files`, the single-process path: same outputs, same names, atomic
writes, same per-file errors. The driver keeps a queue: a replica gets the next file as soon as it
is free, so long and short files balance. A replica whose process or node is lost is restarted by
Ray (its model reloads) and the file it held goes back to the queue for the next free replica; a
file that loses its worker MAX_ATTEMPTS times is reported failed.

Ray is an optional extra (`pip install "whisfusion[ray]"`), imported only here and only when used.
Across machines the model and the media must be at the same paths on every node (a shared
filesystem), as must the outputs' folders.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError, WhisfusionError
from .transcribe import Event, FileDone, FileFailed, Job, ModelSpec, TranscribeOptions, transcribe_files
from .transcript import output_paths

__all__ = ["RAY_MISSING", "ClusterError", "ClusterOptions", "ModelSpec", "Replica", "Cluster", "import_ray"]
log = logging.getLogger("whisfusion_cli")

RAY_MISSING = 'Ray is not installed: pip install "whisfusion[ray]" (or pip install "ray>=2.9")'
CPU_CORES_PER_WORKER = 4  # without GPUs and without a worker count: one CPU replica per this many cores
MAX_ATTEMPTS = 3  # a file whose worker is lost this many times is reported failed
ACTOR_RESTARTS = 2  # Ray restarts a lost replica (it reloads the model) this many times
START_TIMEOUT_S = 900.0  # replicas not loaded by then: the cluster lacks the resources (or the model hangs)
RESTART_TIMEOUT_S = 600.0  # only restarting replicas left and none back by then: the rest fail


class ClusterError(WhisfusionError):
    """Ray is missing, the cluster cannot be reached, or it has no replica left."""


@dataclass(frozen=True)
class ClusterOptions:
    """Where the replicas run and how many there are."""

    address: str = "local"  # "local": start a Ray cluster here; "auto", "ray://head:10001": join one
    workers: int | None = None  # replicas; None: one per GPU, else one per CPU_CORES_PER_WORKER cores
    max_attempts: int = MAX_ATTEMPTS


class Replica:
    """One model replica, run as a Ray actor: loads the model once, then transcribes a file per call."""

    def __init__(self, spec: ModelSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.error: str | None = None
        try:
            self.asr, self.decoding, self.language = spec.load()
        except WhisfusionError as e:  # reported by ready(): an actor that raises here only says it died
            self.error = str(e)

    def ready(self) -> str | None:
        """None once the model is loaded, else why it could not be."""
        return self.error

    def transcribe(self, job: Job, options: TranscribeOptions) -> list[Event]:
        """One file's events (see `transcribe_files`), with this replica's decoding options and language."""
        options = replace(options, decoding=self.decoding, language=self.language)
        return list(transcribe_files(self.asr, [job], options))


def import_ray() -> Any:
    """The ray module.

    Raises:
        ClusterError: Ray is not installed (RAY_MISSING says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def plan_workers(resources: dict[str, float], workers: int | None,
                 device: str) -> tuple[int, bool, int | None]:
    """(replicas, one GPU each?, torch threads per CPU replica) for a cluster with these resources.

    Raises:
        ConfigError: more GPU replicas asked for than the cluster has GPUs.
    """
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus and not device.startswith("cpu"):
        n = workers or gpus
        if n > gpus:
            raise ConfigError(f"{n} replicas asked for, but the Ray cluster has {gpus} GPU(s) "
                              "(one replica per GPU)")
        return n, True, None
    n = workers or max(1, cpus // CPU_CORES_PER_WORKER)
    return n, False, max(1, cpus // n)


def _absolute(job: Job) -> Job:
    """The job with absolute paths (replicas run in other folders, maybe on other machines); its
    messages still name the input as the user gave it."""
    return Job(job.source.absolute(), job.stem.absolute(), job.label or str(job.source))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Cluster:
    """A Ray cluster joined (or started) and its replicas loaded; `transcribe` runs jobs on them.

    Use as a context manager: leaving it kills the replicas and disconnects (a local cluster stops).
    """

    def __init__(self, options: ClusterOptions, spec: ModelSpec, replica: type = Replica):
        self.options, self.spec, self.replica = options, spec, replica
        self.ray: Any = None
        self.actors: list[Any] = []
        self.connected_here = False  # False: the caller was already connected (e.g. inside a Ray job)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connects, starts the replicas and waits for their models.

        Raises:
            ClusterError: no Ray, no cluster at the address, or a replica that cannot start.
            WhisfusionError: the model cannot be loaded, or the options do not fit it (as the CLI checks).
        """
        self.ray = ray = import_ray()
        self._connect()
        n, gpu, threads = plan_workers(ray.cluster_resources(), self.options.workers, self.spec.device)
        actor = ray.remote(self.replica).options(num_cpus=1, num_gpus=1 if gpu else 0,
                                                 max_restarts=ACTOR_RESTARTS, max_task_retries=0)
        self.actors = [actor.remote(self.spec, threads) for _ in range(n)]
        log.info("%d Ray replica(s), %s", n, "one GPU each" if gpu else f"{threads} CPU thread(s) each")
        try:
            errors = ray.get([a.ready.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the Ray replicas did not start within {START_TIMEOUT_S:.0f} s: does the "
                               f"cluster have {n} free {'GPU' if gpu else 'CPU'}(s)?") from None
        except ray.exceptions.RayError as e:
            raise ClusterError(f"a Ray replica failed to start: {_first_line(e)}") from None
        for error in errors:
            if error:
                raise WhisfusionError(error)

    def _connect(self) -> None:
        ray, address = self.ray, self.options.address
        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
        try:
            if address == "local":  # every GPU here; CPU slots for as many replicas as asked for
                slots = max(os.cpu_count() or 1, self.options.workers or 1)
                ray.init(address="local", num_cpus=slots, **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {_first_line(e)}") from None
        self.connected_here = True

    def close(self) -> None:
        if self.ray is None or not self.ray.is_initialized():
            return
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.connected_here:
            self.ray.shutdown()

    def transcribe(self, jobs: Iterable[Job], options: TranscribeOptions) -> Iterator[Event]:
        """Transcribes the jobs on the replicas, as `transcribe_files` does on one model.

        Files whose outputs all exist are skipped unless `options.overwrite`; each other file is
        given to the first free replica; its events come as it finishes (FileStarted, WindowsDone,
        then FileDone or FileFailed), naming the job as given. `options.decoding` and
        `options.language` are each replica's own, resolved against its model.
        """
        todo: deque[Job] = deque()
        for job in jobs:
            if options.write and not options.overwrite and all(p.exists() for p in output_paths(job.stem, options.formats).values()):
                yield FileDone(job, None, skipped=True)
            else:
                todo.append(job)
        yield from _Scheduler(self.ray, list(self.actors), self.options.max_attempts).run(todo, options)


class _Scheduler:
    """The driver's queue: free replicas pull the next file; a lost replica's file is requeued."""

    def __init__(self, ray: Any, actors: list[Any], max_attempts: int):
        self.ray, self.idle, self.max_attempts = ray, actors, max_attempts
        self.running: dict[Any, tuple[Any, Job | None]] = {}  # ref -> (replica, job; None: a restart ping)
        self.attempts: Counter[Job] = Counter()
        self.failures: Counter[Any] = Counter()  # losses per replica
        self.last: dict[Job, Any] = {}  # the replica a requeued file was lost on

    def run(self, todo: deque[Job], options: TranscribeOptions) -> Iterator[Event]:
        while todo or any(job is not None for _, job in self.running.values()):
            self._assign(todo, options)
            busy = any(job is not None for _, job in self.running.values())
            done, _ = self.ray.wait(list(self.running), num_returns=1,
                                    timeout=None if busy else RESTART_TIMEOUT_S) if self.running else ([], [])
            if not done:  # no replica left, or none back from a restart in time
                for job in todo:
                    yield FileFailed(job, job.named(f"{job.source}: no Ray replica left to transcribe it"))
                return
            yield from self._collect(done[0], todo)

    def _assign(self, todo: deque[Job], options: TranscribeOptions) -> None:
        while todo and self.idle:
            job = todo.popleft()
            other = [a for a in self.idle if a is not self.last.get(job)]  # another replica if one is free
            actor = (other or self.idle)[0]
            self.idle.remove(actor)
            self.running[actor.transcribe.remote(_absolute(job), options)] = (actor, job)

    def _collect(self, ref: Any, todo: deque[Job]) -> Iterator[Event]:
        actor, job = self.running.pop(ref)
        try:
            events = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:  # the replica's process or node is gone
            self._lost(actor, e, pinged=job is None)
            if job is not None:
                yield from self._requeue(job, actor, todo)
            return
        except self.ray.exceptions.RayTaskError as e:  # an unexpected error in this file: the rest go on
            self.idle.append(actor)
            if job is not None:
                yield FileFailed(job, job.named(f"{job.source}: {_first_line(e.cause or e)}"))
            return
        self.idle.append(actor)
        if job is not None:
            yield from (replace(event, job=job) for event in events)

    def _lost(self, actor: Any, e: Exception, pinged: bool) -> None:
        """A replica lost: pinged until Ray has restarted it (then it is free again), or dropped once
        a ping finds it dead (its restarts used up) or it failed more often than it can restart."""
        self.failures[actor] += 1
        died = getattr(self.ray.exceptions, "ActorDiedError", ())  # Ray < 2.10: only RayActorError
        dead = (pinged and isinstance(e, died)) or self.failures[actor] > ACTOR_RESTARTS + 1
        log.warning("a Ray replica was lost (%s)%s", _first_line(e), "" if dead else "; restarting it")
        if not dead:
            self.running[actor.ready.remote()] = (actor, None)

    def _requeue(self, job: Job, actor: Any, todo: deque[Job]) -> Iterator[Event]:
        self.attempts[job] += 1
        if self.attempts[job] >= self.max_attempts:
            n = self.attempts[job]
            yield FileFailed(job, job.named(f"{job.source}: its Ray worker was lost {n} times"))
            return
        self.last[job] = actor
        todo.appendleft(job)
