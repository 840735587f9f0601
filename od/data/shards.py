"""Write every shard: in this process, or whole shards spread over a standard-library process pool."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

from od.data.convert import Outcome, write_shard
from od.data.plan import ShardTask, _image_size

# Below this many image bytes the work takes 0.25 s at most: a pool (~25 ms to start) hardly pays.
MIN_POOL_BYTES = 32 * 1024 * 1024


class WorkerError(RuntimeError):
    """A worker process died (killed, out of memory, ``os._exit``) before it finished its shard."""


_converted = None  # in a worker: the count of images converted, shared with the parent (progress bar)


def _start_worker(counter) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us and removes the temp shards
    global _converted
    _converted = counter


def _count(n: int) -> None:
    with _converted.get_lock():
        _converted.value += n


def _write_in_worker(task: ShardTask) -> list[Outcome]:
    return write_shard(task, _count)


def run_tasks(
    tasks: Sequence[ShardTask], workers: int, total: int, show_progress: bool = True, desc: str = "converting"
) -> list[Outcome]:
    """Write (or with ``dry_run`` only check) every shard to its ``tmp_path``; outcomes in task order.

    Each shard is one job, so the output never depends on ``workers``. One worker, one
    shard or a small dataset runs here; otherwise a process pool writes the shards. On
    any failure, and on Ctrl-C, the workers are stopped and no temp shard is left behind.
    A worker that raises raises the same exception here; one that dies raises WorkerError.
    """
    bar = None
    if show_progress:
        from tqdm import tqdm

        # disable=None: a bar on a terminal, none in logs (CI, pipes)
        bar = tqdm(total=total, desc=desc, unit="img", disable=None, dynamic_ncols=True)
    progress = bar.update if bar is not None else lambda n: None
    try:
        small = sum(_image_size(i) for t in tasks for i in t.items) < MIN_POOL_BYTES
        if workers <= 1 or len(tasks) <= 1 or small:
            return [o for t in tasks for o in write_shard(t, progress)]
        return _run_pool(tasks, min(workers, len(tasks)), progress)
    except BaseException:
        for t in tasks:
            with contextlib.suppress(OSError):
                os.unlink(t.tmp_path)
        raise
    finally:
        if bar is not None:
            bar.close()


def _run_pool(tasks: Sequence[ShardTask], workers: int, progress) -> list[Outcome]:
    import od.data.images  # noqa: F401  (Pillow, imported once here: forked workers inherit it)
    # fork starts a worker in milliseconds; not once TensorFlow is loaded (its threads do not survive a fork)
    fork = "fork" in mp.get_all_start_methods() and "tensorflow" not in sys.modules
    ctx = mp.get_context("fork" if fork else "spawn")
    converted = ctx.Value("q", 0)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(converted,))
    try:
        # Biggest shards first, so that no worker is left with a big one at the end.
        order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i].items))
        futures = {i: pool.submit(_write_in_worker, tasks[i]) for i in order}
        pending, shown = set(futures.values()), 0
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # a failure stops the run now
            n = converted.value
            progress(n - shown)
            shown = n
        outcomes = [o for i in range(len(tasks)) for o in futures[i].result()]
    except BrokenProcessPool as e:
        _stop(pool)
        raise WorkerError("a worker process died before finishing its shard (killed, or out of memory?)") from e
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return outcomes


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (a half-written shard is worthless), before their temp files are removed."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
    else:
        for p in list((pool._processes or {}).values()):  # no public way before 3.14
            p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
