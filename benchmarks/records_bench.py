"""Benchmark ``od.records`` against the raw speed of copying the same image bytes.

For each dataset (a generated ~2000-image demo set, and ../shared/datasets/raccoon when
present) it measures, in the same run:
  raw   read every image's bytes and write them into one file (the floor any converter
        pays: disk + Python file I/O), images/s;
  od    ``python -m od.records`` end to end as a user runs it (new process, XML parsing,
        planning, workers, Examples, shards, report), images/s, for 1 and 2 workers;
and prints od/raw ratios (target >= 0.5 on the JPEG fast path) and the peak memory of the
od process tree (parent + workers, summed RSS sampled every 10 ms) at 200 vs 2000 images,
which should stay flat: images are streamed, never all held in RAM.

Usage: python benchmarks/records_bench.py [--images 2000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from od import demo  # noqa: E402
from od.voc import IMAGE_SUFFIXES  # noqa: E402

RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
STARTUP = [0.0]  # seconds: interpreter start + od imports, measured once per run


def images_of(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def make_photos(out: Path, n: int, size=(2400, 1600)) -> None:
    """``n`` photo-sized (~1.5 MB) RGB JPEGs + XML: the regime where bytes, not Python, dominate.

    Four distinct noisy images are encoded and reused under different names (encoding
    6-megapixel JPEGs is slow; the converter does not care that some bytes repeat).
    """
    import numpy as np
    from PIL import Image

    from od.types import Box
    from od.voc import write_voc

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(4):
        small = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.int16) + rng.integers(-20, 21, size=(size[1], size[0], 3), dtype=np.int16)
        buf = __import__("io").BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    for i in range(n):
        name = f"photo_{i:04d}.jpg"
        (out / name).write_bytes(blobs[i % 4])
        write_voc(out / f"photo_{i:04d}.xml", image_path=name, width=size[0], height=size[1],
                  boxes=[Box(100, 100, 900, 700, name="thing")], folder=out.name)


def raw_rate(images: list[Path], out_file: Path, repeats: int = 3) -> float:
    """Best of ``repeats``: read each image's bytes, append them to one file."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open(out_file, "wb") as f:
            for p in images:
                with open(p, "rb") as g:
                    f.write(g.read())
        best = min(best, time.perf_counter() - t0)
        out_file.unlink()
    return len(images) / best


class PeakRss:
    """Sample the summed RSS of a process and all its children."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0  # summed over the process tree
        self.peak_one = 0  # largest single process
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    self.peak_one = max(self.peak_one, rss)
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.01)

    def __enter__(self) -> "PeakRss":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def od_rate(data_dir: Path, work: Path, workers: int, shards: int | None, n_images: int, repeats: int = 2):
    """Best wall time of ``python -m od.records`` over ``repeats`` runs -> (images/s, peak RSS, largest process)."""
    best, peak, peak_one = float("inf"), 0, 0
    for r in range(repeats):
        out = work / f"rec_w{workers}_{r}"
        lm = work / f"lm_w{workers}_{r}.pbtxt"
        cmd = [sys.executable, "-m", "od.records", str(data_dir), "--out", str(out), "--label-map", str(lm),
               "--workers", str(workers), "--quiet"]
        if shards:
            cmd += ["--shards", str(shards)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with PeakRss(proc.pid) as mon:
            _, err = proc.communicate()
        dt = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(f"od.records failed ({proc.returncode}):\n{err}")
        best, peak, peak_one = min(best, dt), max(peak, mon.peak), max(peak_one, mon.peak_one)
        shutil.rmtree(out, ignore_errors=True)
    return n_images / best, peak, peak_one


def startup_seconds() -> float:
    """Interpreter start + od.records imports (part of every od run, not of the raw copy)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import od.records, od.images, od.voc, od.tfexample, od.label_map, PIL.Image"],
                   cwd=REPO, check=True)
    return time.perf_counter() - t0


def bench(name: str, data_dir: Path, work: Path, rows: list) -> None:
    imgs = images_of(data_dir)
    n = len(imgs)
    raw_rate(imgs, work / "raw.bin", repeats=1)  # warm the page cache for both measurements
    raw = raw_rate(imgs, work / "raw.bin")
    for workers in (1, 2):
        shards = workers if workers > 1 else None  # a worker writes whole shards: 2 workers need 2
        rate, peak, peak_one = od_rate(data_dir, work, workers, shards, n)
        warm = n / max(1e-9, n / rate - STARTUP[0])  # without interpreter start + imports
        rows.append((name, n, workers, raw, rate, rate / raw, warm, warm / raw, peak / 2**20, peak_one / 2**20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="size of the generated dataset (default 2000)")
    ap.add_argument("--small", type=int, default=200, help="size of the small dataset for the memory check")
    ap.add_argument("--keep", metavar="DIR", help="generate into / reuse DIR instead of a temp folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="od-records-bench-"))
    try:
        base = Path(args.keep) if args.keep else tmp
        big, small = base / f"demo{args.images}", base / f"demo{args.small}"
        for d, n in ((big, args.images), (small, args.small)):
            if not (d.is_dir() and len(list(d.glob("*.xml"))) == n):
                t0 = time.perf_counter()
                shutil.rmtree(d, ignore_errors=True)
                demo.generate(d, n, seed=0)
                print(f"generated {n} demo images in {time.perf_counter() - t0:.1f} s -> {d}", file=sys.stderr)
        photos = base / "photos100"
        if not (photos.is_dir() and len(list(photos.glob("*.xml"))) == 100):
            shutil.rmtree(photos, ignore_errors=True)
            make_photos(photos, 100)
        work = tmp / "work"
        work.mkdir()
        STARTUP[0] = min(startup_seconds() for _ in range(3))
        print(f"python start + od imports: {STARTUP[0]:.2f} s per run (in 'od img/s', not in 'warm')")
        print(f"CPUs: {os.cpu_count()}, load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        rows: list = []
        bench(f"demo-{args.small}", small, work, rows)
        bench(f"demo-{args.images}", big, work, rows)
        bench("photos-1.5MB", photos, work, rows)
        if RACCOON.is_dir():
            bench("raccoon", RACCOON, work, rows)
        else:
            print(f"(skipping raccoon: {RACCOON} not found)")

        from od.util import format_table

        print(format_table(
            ["dataset", "images", "workers", "raw img/s", "od img/s", "od/raw", "warm img/s", "warm/raw",
             "peak RSS MiB (tree)", "largest process MiB"],
            [(r[0], r[1], r[2], f"{r[3]:.0f}", f"{r[4]:.0f}", f"{r[5]:.2f}", f"{r[6]:.0f}", f"{r[7]:.2f}",
              f"{r[8]:.0f}", f"{r[9]:.0f}") for r in rows],
        ))
        print("(warm = without the interpreter start + imports; od runs below "
              "od.records.MIN_PARALLEL images in one process even with --workers 2)")
        mem = {(r[0], r[2]): (r[8], r[9]) for r in rows}
        for w in (1, 2):
            a, b = mem.get((f"demo-{args.small}", w)), mem.get((f"demo-{args.images}", w))
            if a and b:
                print(f"peak memory {args.small} -> {args.images} images, {w} worker(s): process tree "
                      f"{a[0]:.0f} -> {b[0]:.0f} MiB, largest single process {a[1]:.0f} -> {b[1]:.0f} MiB")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
