"""Benchmark ``od.records`` against the raw speed of copying the same image bytes.

For each dataset (generated ~200- and ~2000-image demo sets, ~100 photo-sized JPEGs, and
../shared/datasets/raccoon when present) it measures, in the same process and run:

  raw   read every image's bytes and write them into one new file (open/read/write per
        image: the floor any converter pays for disk + Python file I/O), images/s;
  floor the work no converter can skip (read + parse each XML; read, sha256, CRC32C and
        write each image), one process: ``ceiling = raw / (floor / workers)`` is the best
        od/raw ratio possible with that many workers;
  od    the whole conversion through the records API, in process (``od.records.main``
        with ``--quiet``: layout detection, XML parsing, planning, worker pool, Examples,
        shards, label map, report.json), images/s, for 1 and 2 workers.

Both read from a warm page cache (every image and XML is read once before any timing),
write into the same folder, and are timed interleaved (raw, od-1, od-2 in rotating
order, ``--repeats`` rounds) so machine load hits them alike; the table reports medians,
ratio = median od rate / median raw rate (target >= 0.5 on the JPEG fast path), and the
CPU seconds each used (children included), which load on a shared machine does not skew.

Separately it reports the command line end to end (``python -m od.records``: interpreter
start, imports, conversion), the start-up alone, and the peak memory of the od process
tree (parent + workers, summed RSS sampled every 5 ms, and the largest single process from
the kernel's VmHWM peak mark) at the small vs the large demo set: it must stay flat (images are
streamed, never all held in RAM).

``--od-path DIR`` benchmarks another copy of the ``od`` package (e.g. an older commit
unpacked with ``git archive HEAD od | tar -x -C DIR``) with the same method, for
before/after tables; ``--baseline DIR`` adds DIR's command line to the end-to-end
table, interleaved with this checkout's runs.

Usage: python benchmarks/records_bench.py [--images 2000] [--small 200] [--repeats 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def images_of(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def warm_cache(data_dir: Path) -> None:
    """Read every file once so raw and od both start from a warm page cache."""
    for p in sorted(data_dir.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass


def make_photos(out: Path, n: int, size=(1600, 1200), distinct: int = 8) -> None:
    """``n`` photo-sized RGB JPEGs (1600x1200 noise, quality 95: ~1.2 MB) + LabelImg XML.

    ``distinct`` different images are encoded and stored under ``n`` names (encoding
    is slow; the converter does not care that some files have equal bytes).
    """
    import numpy as np
    from PIL import Image

    from od.core import Box
    from od.data.voc import write_voc

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(distinct):
        small = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    for i in range(n):
        name = f"photo_{i:04d}.jpg"
        (out / name).write_bytes(blobs[i % distinct])
        write_voc(out / f"photo_{i:04d}.xml", image_path=name, width=size[0], height=size[1],
                  boxes=[Box(100, 100, 900, 700, name="thing")], folder=out.name)


def _cpu() -> float:
    """User + system CPU seconds of this process and its waited-for children (microsecond resolution)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def raw_copy(images: list[Path], out_file: Path) -> tuple[float, float]:
    """(wall s, CPU s): read each image's bytes, append them to one new file."""
    t0, c0 = time.perf_counter(), _cpu()
    with open(out_file, "wb") as f:
        for p in images:
            with open(p, "rb") as g:
                f.write(g.read())
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    out_file.unlink()
    return dt, dc


def floor_copy(pairs: list[tuple[Path, Path | None]], out_file: Path) -> tuple[float, float]:
    """(wall s, CPU s) of the work no converter can skip, in one process, nothing else.

    Per image: read its XML and parse it with the hardened lxml parser, read the image,
    hash it (``image/key/sha256`` is a required key), checksum it (TFRecord CRC32C) and
    write it. ``raw / (floor / workers)`` is then the best od/raw ratio any converter
    could reach with that many workers: it bounds what the target can ask of od.
    """
    import hashlib

    import google_crc32c
    from lxml import etree

    from od.io.files import read_file as read  # one read of the known size, as od reads files

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    t0, c0 = time.perf_counter(), _cpu()
    with open(out_file, "wb", buffering=0) as f:
        for img, xml in pairs:
            if xml is not None:
                etree.fromstring(read(xml), parser)
            data = read(img)
            hashlib.sha256(data).hexdigest()
            google_crc32c.value(data)
            f.write(data)
            del data  # free before the next read, so the allocator reuses the same memory
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    out_file.unlink()
    return dt, dc


def image_xml_pairs(data_dir: Path) -> list[tuple[Path, Path | None]]:
    """Each image with the XML of the same stem (None when there is none)."""
    xmls = {p.stem: p for p in data_dir.rglob("*.xml")}
    return [(p, xmls.get(p.stem)) for p in images_of(data_dir)]


def od_convert(data_dir: Path, work: Path, workers: int) -> tuple[float, float]:
    """(wall s, CPU s) of one in-process conversion with ``workers`` workers (output removed after)."""
    import od.records

    out, lm = work / f"od_w{workers}", work / f"od_w{workers}.pbtxt"
    argv = [str(data_dir), "--out", str(out), "--label-map", str(lm), "--workers", str(workers), "--quiet"]
    if workers > 1:
        argv += ["--shards", str(workers)]  # a worker writes whole shards: 2 workers need >= 2 shards
    sink = io.StringIO()
    t0, c0 = time.perf_counter(), _cpu()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        rc = od.records.main(argv)
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    if rc not in (0, 1):
        raise SystemExit(f"od.records failed ({rc}) on {data_dir}:\n{sink.getvalue()}")
    shutil.rmtree(out, ignore_errors=True)
    lm.unlink(missing_ok=True)
    return dt, dc


def bench_inprocess(name: str, data_dir: Path, work: Path, repeats: int) -> list[dict]:
    imgs = images_of(data_dir)
    n = len(imgs)
    warm_cache(data_dir)
    pairs = image_xml_pairs(data_dir)
    runs = {
        "raw": lambda: raw_copy(imgs, work / "raw.bin"),
        "floor": lambda: floor_copy(pairs, work / "floor.bin"),
        "od-1": lambda: od_convert(data_dir, work, 1),
        "od-2": lambda: od_convert(data_dir, work, 2),
    }
    for fn in runs.values():  # one untimed round: imports, lazy caches, allocator
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(repeats):
        for k in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            times[k].append(runs[k]())
    raw_wall = statistics.median(t for t, _ in times["raw"])
    raw_cpu = statistics.median(c for _, c in times["raw"])
    floor_wall = statistics.median(t for t, _ in times["floor"])
    rows = []
    for workers in (1, 2):
        ts = times[f"od-{workers}"]
        wall = statistics.median(t for t, _ in ts)
        rows.append(dict(
            dataset=name, images=n, mb=sum(p.stat().st_size for p in imgs) / n / 1e6, workers=workers,
            raw=n / raw_wall, od=n / wall, ratio=raw_wall / wall,
            best_ratio=min(t for t, _ in times["raw"]) / min(t for t, _ in ts),
            raw_us=raw_wall / n * 1e6, od_us=wall / n * 1e6,
            raw_cpu_us=raw_cpu / n * 1e6, od_cpu_us=statistics.median(c for _, c in ts) / n * 1e6,
            floor_us=floor_wall / n * 1e6, ceiling=raw_wall / (floor_wall / workers),
        ))
    return rows


def _hwm(pid: int) -> int:
    """The kernel's peak-RSS mark (VmHWM) of a live process, bytes (0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakRss:
    """Sample the summed RSS of a process and all its children, and each one's VmHWM."""

    def __init__(self, pid: int):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.peak_one = 0  # largest single process (VmHWM: exact peak, not sampled)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ps = self.psutil
        while not self._stop.is_set():
            try:
                total = 0
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except ps.Error:
                        pass
                    self.peak_one = max(self.peak_one, _hwm(p.pid))
                self.peak = max(self.peak, total)
            except ps.Error:
                pass
            self._stop.wait(0.005)

    def __enter__(self) -> "PeakRss":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def cli_run(data_dir: Path, work: Path, workers: int, env: dict, cwd: Path) -> tuple[float, int, int]:
    """One ``python -m od.records`` run: (wall s, peak tree RSS bytes, largest process max RSS bytes)."""
    out, lm = work / f"cli_w{workers}", work / f"cli_w{workers}.pbtxt"
    cmd = [sys.executable, "-m", "od.records", str(data_dir), "--out", str(out), "--label-map", str(lm),
           "--workers", str(workers), "--quiet"]
    if workers > 1:
        cmd += ["--shards", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRss(proc.pid) as mon:
        err = proc.stderr.read()
        proc.wait()
    dt = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"od.records failed ({proc.returncode}):\n{err.decode(errors='replace')}")
    shutil.rmtree(out, ignore_errors=True)
    lm.unlink(missing_ok=True)
    return dt, mon.peak, mon.peak_one


def startup_seconds(env: dict, cwd: Path) -> float:
    """Interpreter start + what ``python -m od.records`` imports before converting."""
    code = "import od.records, od.data.images, od.data.voc, od.io.example, od.io.tfrecord, od.io.label_map"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="size of the large demo set (default 2000)")
    ap.add_argument("--small", type=int, default=200, help="size of the small demo set for the memory check")
    ap.add_argument("--photos", type=int, default=100, help="number of ~1.2 MB photos (default 100)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per dataset (medians; default 7)")
    ap.add_argument("--cli-repeats", type=int, default=3, help="command-line runs per case (default 3)")
    ap.add_argument("--keep", metavar="DIR", help="generate into / reuse DIR instead of a temp folder")
    ap.add_argument("--od-path", metavar="DIR", help="benchmark the od package found in DIR instead of this checkout")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time the command line of the od package in DIR, interleaved with this one")
    ap.add_argument("--only", help="comma-separated dataset names to run (demo-small, demo, photos, raccoon)")
    args = ap.parse_args()

    od_root = Path(args.od_path).resolve() if args.od_path else REPO
    sys.path.insert(0, str(od_root))
    env = dict(os.environ, PYTHONPATH=str(od_root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import od.records  # noqa: F401  (imported from od_root)
    from od.data import synthetic
    from od.console import format_table

    print(f"od package: {Path(od.records.__file__).parent}")
    tmp = Path(tempfile.mkdtemp(prefix="od-records-bench-"))
    try:
        base = Path(args.keep) if args.keep else tmp
        sets = {
            "demo-small": (f"demo-{args.small}", base / f"demo{args.small}"),
            "demo": (f"demo-{args.images}", base / f"demo{args.images}"),
            "photos": (f"photos-{args.photos}", base / f"photos{args.photos}"),
        }
        for key, n in (("demo-small", args.small), ("demo", args.images)):
            d = sets[key][1]
            if not (d.is_dir() and len(list(d.glob("*.xml"))) == n):
                t0 = time.perf_counter()
                shutil.rmtree(d, ignore_errors=True)
                synthetic.generate(d, n, seed=0)
                print(f"generated {n} demo images in {time.perf_counter() - t0:.1f} s -> {d}", file=sys.stderr)
        photos = sets["photos"][1]
        if not (photos.is_dir() and len(list(photos.glob("*.xml"))) == args.photos):
            shutil.rmtree(photos, ignore_errors=True)
            make_photos(photos, args.photos)
        if RACCOON.is_dir():
            sets["raccoon"] = ("raccoon", RACCOON)
        else:
            print(f"(skipping raccoon: {RACCOON} not found)")
        only = set(args.only.split(",")) if args.only else set(sets)
        work = tmp / "work"
        work.mkdir()

        print(f"CPUs: {os.cpu_count()}, load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        rows: list[dict] = []
        for key, (name, d) in sets.items():
            if key in only:
                rows += bench_inprocess(name, d, work, args.repeats)
        print("\nIn-process conversion (records API) vs raw copy; medians of "
              f"{args.repeats} interleaved rounds, warm page cache:")
        print(format_table(
            ["dataset", "images", "MB/img", "workers", "raw img/s", "od img/s", "od/raw", "od/raw best",
             "ceiling", "raw us/img", "floor us/img", "od us/img", "raw CPU us/img", "od CPU us/img"],
            [(r["dataset"], r["images"], f"{r['mb']:.3f}", r["workers"], f"{r['raw']:.0f}", f"{r['od']:.0f}",
              f"{r['ratio']:.2f}", f"{r['best_ratio']:.2f}", f"{r['ceiling']:.2f}", f"{r['raw_us']:.0f}",
              f"{r['floor_us']:.0f}", f"{r['od_us']:.0f}", f"{r['raw_cpu_us']:.0f}", f"{r['od_cpu_us']:.0f}")
             for r in rows],
        ))
        print("(floor = the work no converter can skip, one process: read + parse the XML, read, sha256, "
              "CRC32C and write the image; ceiling = raw / (floor / workers), the best od/raw any "
              "converter could reach with that many workers and no other cost)")
        print("(CPU = user + system seconds of this process and its finished children, so it includes "
              "the workers for 2 workers; od converts in one process below od.data.workers.MIN_PARALLEL images "
              "unless they total MIN_PARALLEL_BYTES)")

        # Command line: this package and, with --baseline, another one, interleaved run by run.
        pkgs = [("", od_root, env)]
        if args.baseline:
            broot = Path(args.baseline).resolve()
            benv = dict(os.environ, PYTHONPATH=str(broot) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            pkgs.append((" (baseline)", broot, benv))
        print()
        for tag, root_, env_ in pkgs:
            startup = statistics.median(startup_seconds(env_, root_) for _ in range(3))
            print(f"python start + od imports{tag}: {startup:.2f} s per command-line run")
        cli_rows = []
        for key in ("demo-small", "demo", "photos", "raccoon"):
            if key not in sets or key not in only:
                continue
            name, d = sets[key]
            n = len(images_of(d))
            for workers in (1, 2):
                res: dict[str, list] = {tag: [] for tag, _, _ in pkgs}
                for _ in range(args.cli_repeats):
                    for tag, root_, env_ in pkgs:
                        res[tag].append(cli_run(d, work, workers, env_, root_))
                for tag, _, _ in pkgs:
                    rs = res[tag]
                    wall = statistics.median(r[0] for r in rs)
                    cli_rows.append((name + tag, n, workers, f"{wall:.2f}", f"{n / wall:.0f}",
                                     f"{max(r[1] for r in rs) / 2**20:.0f}", f"{max(r[2] for r in rs) / 2**20:.0f}"))
        print("Command line end to end (python -m od.records, median wall time; memory = max over runs):")
        print(format_table(["dataset", "images", "workers", "seconds", "img/s", "peak RSS MiB (tree)",
                            "largest process MiB"], cli_rows))
        mem = {(r[0], r[2]): (r[5], r[6]) for r in cli_rows}
        for w in (1, 2):
            a, b = mem.get((f"demo-{args.small}", w)), mem.get((f"demo-{args.images}", w))
            if a and b:
                print(f"peak memory {args.small} -> {args.images} images, {w} worker(s): process tree "
                      f"{a[0]} -> {b[0]} MiB, largest single process {a[1]} -> {b[1]} MiB")
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
