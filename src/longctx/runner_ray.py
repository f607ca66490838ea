"""Scale-out on Ray: cells are spread over worker actors (one per GPU, or per `cpus_per_worker`
CPUs), each holding one loaded model; workers send rows back and only the driver writes the run
database, so the database, resume and budget semantics are exactly the local runner's.

Workers regenerate a cell's samples from (task, length, seed, tokenizer): generation is
deterministic, so driver and workers agree on every sample id without shipping prompt texts.
"""

from __future__ import annotations

from .config import ModelSpec, RunSpec
from .errors import UsageError
from .store import RunStore


def _worker_class():
    import ray

    @ray.remote
    class ModelWorker:
        def __init__(self, spec: RunSpec, model_spec: ModelSpec):
            from .generate import SampleCache
            from .models import load_model
            from .runner import model_context

            self.spec, self.model_spec = spec, model_spec
            self.adapter = load_model(model_spec.backend, **model_spec.args)
            self.ctx = model_context(spec, model_spec, self.adapter)
            self.cache, self.cells, self.n = SampleCache(), {}, spec.samples

        def call_size(self) -> int:
            from .runner import call_size

            return call_size(self.spec, self.adapter)

        def info(self) -> dict:
            from .runner import model_info

            return model_info(self.model_spec, self.adapter)

        def samples(self, task, length: int):
            key = (task.name, length)
            if key not in self.cells:
                self.cells[key] = self.cache.get(task, length, self.n, self.ctx)
            return self.cells[key]

        def predict(self, task, length: int, ids: list[str]):
            from .runner import run_batch, score_batch

            by_id = {s.id: s for s in self.samples(task, length)}
            batch = [by_id[i] for i in ids]
            completions = run_batch(self.adapter, batch)
            return batch, completions, score_batch(batch, completions)

    return ModelWorker


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address must answer before Ray is started on it: ray.init waits for an address
    that does not answer for about a minute, deaf to Ctrl-C. "auto" and a local runtime (None)
    are Ray's to find."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address must look like HOST:PORT (or ray://HOST:PORT, auto), not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def run_on_ray(spec: RunSpec, store: RunStore, tasks, progress=None, address: str | None = None,
               workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        if workers is None:
            resources = ray.cluster_resources()
            workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else int(
                resources.get("CPU", 1) // cpus_per_worker)
        if workers < 1:
            raise UsageError("the Ray cluster has no room for one worker; lower cpus_per_worker/gpus_per_worker")
        worker_cls = _worker_class().options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        for model_spec in spec.models:
            pool = [worker_cls.remote(spec, model_spec) for _ in range(workers)]
            store.set_model_info(model_spec.name, ray.get(pool[0].info.remote()))
            _run_model(spec, store, model_spec, tasks, pool, progress)
            for actor in pool:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()


def _run_model(spec, store, model_spec, tasks, pool, progress) -> None:
    import ray

    from .runner import open_cell

    pending = {}
    turn = 0
    size = ray.get(pool[0].call_size.remote())
    for task in tasks:
        for length in spec.lengths:
            label = f"{task.name}@{length}"
            samples = ray.get(pool[turn % len(pool)].samples.remote(task, length))
            todo = [s.id for s in open_cell(store, model_spec.name, samples, label, progress)]
            for start in range(0, len(todo), size):
                ref = pool[turn % len(pool)].predict.remote(task, length, todo[start:start + size])
                pending[ref] = label
                turn += 1
    while pending:  # write each batch as soon as any worker returns it
        ready, _ = ray.wait(list(pending), num_returns=1)
        label = pending.pop(ready[0])
        batch, completions, scores = ray.get(ready[0])
        store.write_batch(model_spec.name, batch, completions, scores)
        if progress:
            progress(model_spec.name, label, len(batch))
