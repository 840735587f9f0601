"""Worker processes for the conversion: this process plus one child per extra worker."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import sys
from dataclasses import replace
from typing import Callable, Sequence

from od.data.convert import Outcome, write_shard


PARSE_CHUNK = 256  # most XMLs per parsing job (fewer when that leaves workers without jobs)
MIN_PARALLEL = 300  # below this many images a second process costs more than it saves (fork + copy-on-write ~10 ms)
MIN_PARALLEL_BYTES = 32 * 1024 * 1024  # ... unless they are big: hashing + copying 32 MB takes ~50 ms
CHUNK_MIN_ITEMS = 32  # a shard is split into chunks of at least this many images (see _chunked)


class WorkerError(RuntimeError):
    """A worker process failed or died; the message says which job and why."""


def _child_main(conn, progress: bool) -> None:
    """A worker process: run ``(job id, fn, job)`` messages until told to stop (None or EOF)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it cleans up temp shards
    gc.disable()  # short-lived, and its jobs make no reference cycles (see main)

    def report(n: int) -> None:
        if progress:
            conn.send(("progress", None, n))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:  # every result is delivered: leave at once (nothing to flush or clean up)
            os._exit(0)
        jid, fn, job = msg
        try:
            result = fn(job, report)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            import traceback

            conn.send(("error", jid, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            continue
        conn.send(("done", jid, result))


class _Child:
    """One worker process and its end of a duplex pipe."""

    def __init__(self, ctx, progress: bool):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_child_main, args=(child_conn, progress), daemon=True)
        self.proc.start()
        child_conn.close()
        self.outstanding: list[int] = []  # job ids sent and not answered yet, in order


class Workers:
    """Runs jobs in this process *and* ``workers - 1`` child processes.

    The parent works too instead of waiting: on a 2-core machine one child plus the parent
    use both cores with a single fork (~3 ms), and only the child's share of jobs and
    results is pickled. Children are plain processes on pipes (no executor machinery); they
    and the parent take jobs from one queue. ``map_progress`` returns results in job order
    whoever ran them, so output never depends on the number of workers.
    """

    def __init__(self, workers: int, progress: bool = True):
        self.n = max(1, workers)
        self._progress = progress  # False (--quiet): children send no progress messages
        self._children: list[_Child] = []

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.terminate()
            return
        for c in self._children:
            try:
                c.conn.send(None)
            except OSError:
                pass
        for c in self._children:
            c.proc.join(timeout=10)
            if c.proc.is_alive():
                c.proc.terminate()
            c.conn.close()
        self._children = []

    def _start(self) -> None:
        if self._children or self.n <= 1:
            return
        # fork is cheapest (children inherit the imports), but not once TensorFlow is loaded
        # in this process (its threads do not survive a fork); od itself never loads it here.
        use_fork = "fork" in mp.get_all_start_methods() and "tensorflow" not in sys.modules
        if use_fork:
            # Import what the jobs use (Pillow, lxml, crc32c) once, here, so that every forked
            # child inherits it instead of importing it again.
            import od.data.images  # noqa: F401
            import od.io.tfrecord
            import od.data.voc  # noqa: F401

            od.io.tfrecord._crc32c_value()
            # Objects that exist now are left out of the garbage collector's scans, in here
            # and in the children: a collection in a child would otherwise touch (and so
            # copy-on-write) every page of memory it shares with the parent.
            gc.freeze()
        ctx = mp.get_context("fork" if use_fork else "spawn")
        self._children = [_Child(ctx, self._progress) for _ in range(self.n - 1)]

    def terminate(self) -> None:
        """Stop the children now (Ctrl-C, errors): a half-written shard is worthless anyway."""
        for c in self._children:
            if c.proc.is_alive():
                c.proc.terminate()
        for c in self._children:
            c.proc.join(timeout=5)
            c.conn.close()
        self._children = []

    def map_progress(
        self, fn, jobs: Sequence, total: int, desc: str, show: bool, leave: bool = True, parallel: bool | None = None,
        ahead: int = 1,
    ) -> list:
        """``fn(job, progress)`` for every job, results in order of ``jobs``; children help when there is enough work.

        ``parallel`` overrides the default rule (at least ``MIN_PARALLEL`` images). ``ahead``
        jobs are queued per child: 2 for many small jobs, 1 when jobs are big and few
        (one child must not hoard two shards while the parent has nothing left).
        """
        if show:
            from tqdm import tqdm

            # disable=None: a bar on a terminal, none in logs (CI, pipes)
            bar = tqdm(total=total, desc=desc, unit="img", disable=None, dynamic_ncols=True, leave=leave)
        else:  # --quiet: no bar, and no tqdm import
            bar = _NoBar()
        try:
            if parallel is None:
                parallel = total >= MIN_PARALLEL
            if self.n <= 1 or len(jobs) <= 1 or not parallel:
                return [fn(j, bar.update) for j in jobs]
            self._start()
            return self._run(fn, jobs, bar, ahead)
        finally:
            bar.close()

    def _run(self, fn, jobs: Sequence, bar, ahead: int) -> list:
        """Children and the parent take jobs from one queue until it is empty.

        A feeder thread hands each child its next job the moment it answers, so a child
        never waits for the parent to finish one of its own jobs.
        """
        import threading
        from multiprocessing.connection import wait

        results: list = [None] * len(jobs)
        lock = threading.Lock()
        state = {"next": 0}
        failures: list[BaseException] = []

        def take() -> int | None:
            with lock:
                i = state["next"]
                if i >= len(jobs):
                    return None
                state["next"] = i + 1
                return i

        def update(n: int) -> None:
            with lock:
                bar.update(n)

        def give(c: _Child) -> None:
            i = take()
            if i is not None:
                c.conn.send((i, fn, jobs[i]))
                c.outstanding.append(i)

        def feeder() -> None:
            by_conn = {c.conn: c for c in self._children}
            try:
                for _ in range(ahead):
                    for c in self._children:
                        give(c)
                while True:
                    busy = [c.conn for c in self._children if c.outstanding]
                    if not busy:
                        return
                    for conn in wait(busy):
                        c = by_conn[conn]
                        try:
                            kind, jid, payload = conn.recv()
                        except (EOFError, OSError):
                            raise WorkerError(
                                f"a worker process (pid {c.proc.pid}) died (exit code {c.proc.exitcode})"
                            ) from None
                        if kind == "progress":
                            update(payload)
                            continue
                        c.outstanding.remove(jid)
                        if kind == "error":
                            raise WorkerError(f"a worker failed:\n{payload}")
                        results[jid] = payload
                        give(c)
            except BaseException as e:  # noqa: BLE001 - re-raised in the parent's thread
                with lock:
                    state["next"] = len(jobs)  # no more jobs for anyone
                failures.append(e)

        # The feeder needs the GIL to answer a child quickly while this thread converts.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        thread = threading.Thread(target=feeder, name="od-records-feeder", daemon=True)
        thread.start()
        try:
            while (i := take()) is not None:
                results[i] = fn(jobs[i], update)
        except BaseException:
            with lock:
                state["next"] = len(jobs)
            raise
        finally:
            sys.setswitchinterval(switch)
        thread.join()
        if failures:
            raise failures[0]
        return results


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _makespan(sizes: Sequence[int], workers: int) -> int:
    """Finish time when ``workers`` take jobs biggest first, each the next one when free."""
    import heapq

    loads = [0] * workers
    for s in sorted(sizes, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + s)
    return max(loads)


def _chunked(tasks: Sequence[ShardTask], workers: int) -> list[tuple[int, ShardTask]]:
    """Split shards only where workers would otherwise wait (e.g. one big train shard).

    Whole shards are kept when they already share out evenly. Otherwise the shards, one
    after the other, are cut into ``workers`` equal runs of images, so a shard crossing a
    cut is written as consecutive chunks, each to its own part file (``tmp_path`` + ``-k``);
    ``_join_parts`` puts them back together in order, byte-identical to a shard written
    whole. Few cuts, because joining copies every part but the first. Returns
    ``(shard number, task)`` pairs in shard order.
    """
    sizes = [len(t.items) for t in tasks]
    total = sum(sizes)
    if workers <= 1 or total == 0 or _makespan(sizes, workers) <= 1.05 * total / workers + CHUNK_MIN_ITEMS:
        return list(enumerate(tasks))
    cuts = sorted({round(total * k / workers) for k in range(1, workers)})
    out: list[tuple[int, ShardTask]] = []
    start = 0
    for s, t in enumerate(tasks):
        n = len(t.items)
        inner = [c - start for c in cuts if start + CHUNK_MIN_ITEMS <= c <= start + n - CHUNK_MIN_ITEMS]
        start += n
        if not inner:
            out.append((s, t))
            continue
        bounds = [0, *inner, n]
        for k in range(len(bounds) - 1):
            part = replace(t, tmp_path=f"{t.tmp_path[:-4]}-{k}.tmp", items=t.items[bounds[k] : bounds[k + 1]])
            out.append((s, part))
    return out


def _join_parts(dest: str, parts: Sequence[str]) -> None:
    """``dest`` = the part files one after the other (the first is renamed, the rest appended)."""
    os.replace(parts[0], dest)
    # Not O_APPEND: copy_file_range refuses to write to a file opened for appending.
    out = os.open(dest, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        for p in parts[1:]:
            src = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                start = os.lseek(out, 0, os.SEEK_END)
                size = os.fstat(src).st_size
                done = 0  # bytes of this part appended so far
                try:  # in the kernel (no copy through Python; a reflink on filesystems that can)
                    while done < size:
                        n = os.copy_file_range(src, out, size - done)
                        if n == 0:
                            break
                        done += n
                except (AttributeError, OSError):
                    pass  # not supported here (other OS, some file systems), or failed part-way
                if done < size:  # start this part again with plain reads and writes
                    os.ftruncate(out, start)
                    os.lseek(out, start, os.SEEK_SET)
                    os.lseek(src, 0, os.SEEK_SET)
                    while chunk := os.read(src, 1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
            finally:
                os.close(src)
            os.unlink(p)
    finally:
        os.close(out)


def run_tasks(
    tasks: Sequence[ShardTask], workers: int, total: int, show_progress: bool = True, desc: str = "converting"
) -> list[Outcome]:
    """Write (or check) every shard with ``workers`` processes; each ends up at its ``tmp_path``."""
    with Workers(workers, progress=show_progress) as pool:
        return _run_tasks(tasks, pool, total, show_progress, desc)


def _run_tasks(tasks, pool: Workers, total: int, show_progress: bool = True, desc: str = "converting") -> list[Outcome]:
    from od.data.plan import _image_size

    parallel = None
    if pool.n > 1 and total < MIN_PARALLEL:  # few images: worth it only if they are big
        parallel = sum(_image_size(it) for t in tasks for it in t.items) >= MIN_PARALLEL_BYTES
    chunks = list(enumerate(tasks)) if parallel is False else _chunked(tasks, pool.n)
    # Biggest chunks first, so that no worker is left with a big one at the end.
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i][1].items))
    try:
        results = pool.map_progress(
            write_shard, [chunks[i][1] for i in order], total, desc, show_progress, parallel=parallel
        )
        by_chunk = dict(zip(order, results))
        if not all(t.dry_run for t in tasks):
            for s, t in enumerate(tasks):
                parts = [c.tmp_path for k, c in chunks if k == s]
                if parts != [t.tmp_path]:
                    _join_parts(t.tmp_path, parts)
    except BaseException:
        pool.terminate()  # stop workers before removing the part files they write
        for _, c in chunks:
            with contextlib.suppress(OSError):
                os.unlink(c.tmp_path)
        raise
    return [o for i in range(len(chunks)) for o in by_chunk[i]]
