"""Benchmark ``od.records`` against the decode floor, side by side in one run.

Per dataset (generated demo sets of ~200 and ~2000 images, ~100 photo-sized JPEGs, and
../shared/datasets/raccoon when present), timed in this process, interleaved (rotating
order, ``--repeats`` rounds, medians) from a warm page cache:

  floor  the work no checking converter can skip, one process: per image, read and parse
         the XML (hardened lxml), read the image, decode every pixel (Pillow), sha256 it
         and write its bytes to one file;
  od-1   ``od.records.main`` with ``--quiet --workers 1`` (default shards): the whole
         conversion (layout, XML, plan, Examples, shards, label map, report.json);
  od-2   the same with ``--workers 2``.

Then the command line end to end (``python -m od.records``, interpreter start included)
on the raccoon set, and the peak memory (kernel high-water mark of the largest process:
parent or worker; Linux) at the small vs the large demo set.

Targets: od with 1 worker >= 0.7 x the floor's images/s; raccoon under 2 s wall; memory
flat (images are streamed, never all held in RAM).

Label formats: each generated demo set is also written as COCO and YOLO by ``od.convert``'s
library (``od.data.reformat.convert_dataset``, images hard-linked: the same bytes, the same page
cache), and ``od.records --workers 1`` is timed on the three inputs side by side in the same
rounds (rotating order, medians). Target: COCO and YOLO images/s >= 0.9 x VOC's. A format whose
reader or writer is missing fails the benchmark (it is never skipped).

``--od-path DIR`` benchmarks another copy of the ``od`` package (e.g. an older commit:
``git archive HEAD od | tar -x -C DIR``) with the same method.

Usage: python benchmarks/records_bench.py [--repeats 5] [--keep DIR] [--only demo,raccoon]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def images_of(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def image_xml_pairs(data_dir: Path) -> list[tuple[Path, Path | None]]:
    """Each image with the XML of the same stem (None when there is none)."""
    xmls = {p.stem: p for p in data_dir.rglob("*.xml")}
    return [(p, xmls.get(p.stem)) for p in images_of(data_dir)]


def warm_cache(data_dir: Path) -> None:
    for p in data_dir.rglob("*"):
        if p.is_file():
            p.read_bytes()


def make_photos(out: Path, n: int, size=(1600, 1200), distinct: int = 8) -> None:
    """``n`` photo-sized JPEGs (smooth noise, quality 95: ~1.2 MB) + VOC XML; ``distinct`` different ones."""
    import numpy as np
    from PIL import Image

    from od.core import Box
    from od.data.voc import write_voc

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(distinct):
        small = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(small, "RGB").resize(size, Image.BILINEAR), dtype=np.int16)
        arr += rng.integers(-12, 13, size=arr.shape, dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    for i in range(n):
        (out / f"photo_{i:04d}.jpg").write_bytes(blobs[i % distinct])
        write_voc(out / f"photo_{i:04d}.xml", image_path=f"photo_{i:04d}.jpg", width=size[0], height=size[1],
                  boxes=[Box(100, 100, 900, 700, name="thing")], folder=out.name)


def decode_floor(pairs: list[tuple[Path, Path | None]], out_file: Path) -> float:
    """Wall seconds of the work no checking converter can skip (see the module docstring)."""
    import hashlib

    from lxml import etree
    from PIL import Image

    from od.io.files import read_file

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    t0 = time.perf_counter()
    with open(out_file, "wb") as f:
        for img, xml in pairs:
            if xml is not None:
                etree.fromstring(read_file(xml), parser)
            data = read_file(img)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            hashlib.sha256(data).hexdigest()
            f.write(data)
    dt = time.perf_counter() - t0
    out_file.unlink()
    return dt


def od_convert(data_dir: Path, work: Path, workers: int, tag: str = "") -> tuple[float, int, int]:
    """(wall seconds, shards written, images converted) of one in-process conversion."""
    import json

    import od.records

    out, lm = work / f"od{tag}_w{workers}", work / f"od{tag}_w{workers}.pbtxt"
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        rc = od.records.main([str(data_dir), "--out", str(out), "--label-map", str(lm), "--quiet",
                              "--workers", str(workers)])
    dt = time.perf_counter() - t0
    if rc not in (0, 1):
        raise SystemExit(f"od.records failed ({rc}) on {data_dir}:\n{sink.getvalue()}")
    shards = len(list(out.glob("*.tfrecord")))
    converted = json.loads((out / "report.json").read_text())["summary"]["images_converted"]
    shutil.rmtree(out)
    lm.unlink(missing_ok=True)
    return dt, shards, converted


def bench_inprocess(name: str, data_dir: Path, work: Path, repeats: int) -> dict:
    pairs = image_xml_pairs(data_dir)
    n = len(pairs)
    warm_cache(data_dir)
    runs = {
        "floor": lambda: (decode_floor(pairs, work / "floor.bin"), 0),
        "od-1": lambda: od_convert(data_dir, work, 1),
        "od-2": lambda: od_convert(data_dir, work, 2),
    }
    shards = {k: fn()[1] for k, fn in runs.items()}  # one untimed round: imports, caches, allocator
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(repeats):
        for k in order[r % 3:] + order[: r % 3]:  # rotate who goes first: machine load hits all alike
            times[k].append(runs[k]()[0])
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    mb = sum(p.stat().st_size for p, _ in pairs) / n / 1e6
    return dict(dataset=name, images=n, mb=mb, shards=shards["od-1"], **rate)


FORMATS = ("voc", "coco", "yolo")  # the VOC input is the generated set itself


def make_format_inputs(data_dir: Path, work: Path) -> dict[str, Path]:
    """``data_dir`` (VOC) and the same dataset written as COCO and YOLO by od.convert's library.

    Raises (ImportError, SystemExit) when a format cannot be written or is not read back as
    that format: a missing format fails the benchmark instead of vanishing from the table."""
    from od.data.layout import detect_layout
    from od.data.reformat import convert_dataset

    layout = detect_layout(data_dir)
    inputs = {"voc": data_dir}
    for fmt in FORMATS[1:]:
        out = work / f"{data_dir.name}-{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        res = convert_dataset(layout, out, fmt, images="hardlink")
        if not res.written or res.skipped:
            raise SystemExit(f"od.convert could not write {data_dir} as {fmt}: {res.problems[:3]}")
        found = detect_layout(out).kind
        if found != fmt:
            raise SystemExit(f"{out}: written as {fmt} but found as {found}")
        inputs[fmt] = out
    return inputs


def bench_formats(name: str, inputs: dict[str, Path], repeats: int, work: Path) -> dict:
    """od.records (1 worker) images/s on the same dataset in each format, in the same interleaved rounds."""
    for d in inputs.values():
        warm_cache(d)
    runs = {fmt: (lambda d=d, fmt=fmt: od_convert(d, work, 1, tag=f"-{fmt}")) for fmt, d in inputs.items()}
    converted = {fmt: fn()[2] for fmt, fn in runs.items()}  # untimed round; every format converts every image
    if len(set(converted.values())) != 1:
        raise SystemExit(f"{name}: od.records converted different numbers of images per format: {converted}")
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(repeats):
        for k in order[r % len(order):] + order[: r % len(order)]:
            times[k].append(runs[k]()[0])
    n = converted["voc"]
    return dict(dataset=name, images=n, **{k: n / statistics.median(v) for k, v in times.items()})


# ``python -m od.records`` (runpy, as -m does) that reports its peak memory on exit: the
# kernel's high-water mark of this process (VmHWM) or of its largest worker (RUSAGE_CHILDREN).
# Not the ru_maxrss that wait4 gives us: that one keeps this big benchmark process's own
# RSS across the child's fork and exec.
_MEASURED = """
import atexit, resource, runpy, sys
def peak():
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    sys.stderr.write(f"PEAK-KIB {max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)}\\n")
atexit.register(peak)
runpy.run_module("od.records", run_name="__main__", alter_sys=True)
"""


def cli_run(data_dir: Path, work: Path, workers: int | None, env: dict, cwd: Path) -> tuple[float, int]:
    """One ``python -m od.records``: (wall seconds, peak RSS of its largest process in bytes)."""
    out, lm = work / "cli", work / "cli.pbtxt"
    cmd = [sys.executable, "-c", _MEASURED, str(data_dir), "--out", str(out), "--label-map", str(lm), "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        raise SystemExit(f"python -m od.records failed ({res.returncode}) on {data_dir}:\n{res.stderr}")
    shutil.rmtree(out, ignore_errors=True)
    lm.unlink(missing_ok=True)
    return dt, 1024 * int(res.stderr.rsplit("PEAK-KIB ", 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="size of the large demo set (default 2000)")
    ap.add_argument("--small", type=int, default=200, help="size of the small demo set (default 200)")
    ap.add_argument("--photos", type=int, default=100, help="number of ~1.2 MB photos (default 100)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per dataset (medians; default 5)")
    ap.add_argument("--cli-repeats", type=int, default=5, help="command-line runs per case (default 5)")
    ap.add_argument("--keep", metavar="DIR", help="generate into / reuse DIR instead of a temp folder")
    ap.add_argument("--od-path", metavar="DIR", help="benchmark the od package found in DIR instead of this checkout")
    ap.add_argument("--only", help="comma-separated datasets (demo-small, demo, photos, raccoon)")
    args = ap.parse_args()

    od_root = Path(args.od_path).resolve() if args.od_path else REPO
    sys.path.insert(0, str(od_root))
    env = dict(os.environ, PYTHONPATH=str(od_root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import od.records
    from od.console import format_table
    from od.data import synthetic

    print(f"od package: {Path(od.records.__file__).parent}; CPUs: {os.cpu_count()}, "
          f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="od-records-bench-"))
    try:
        base = Path(args.keep) if args.keep else tmp
        sets = {"demo-small": (f"demo-{args.small}", base / f"demo{args.small}"),
                "demo": (f"demo-{args.images}", base / f"demo{args.images}"),
                "photos": (f"photos-{args.photos}", base / f"photos{args.photos}")}
        for key, n in (("demo-small", args.small), ("demo", args.images), ("photos", args.photos)):
            d = sets[key][1]
            if not (d.is_dir() and len(list(d.glob("*.xml"))) == n):
                shutil.rmtree(d, ignore_errors=True)
                synthetic.generate(d, n, seed=0) if key != "photos" else make_photos(d, n)
        if RACCOON.is_dir():
            sets["raccoon"] = ("raccoon", RACCOON)
        else:
            print(f"(raccoon skipped: {RACCOON} not found)")
        only = set(args.only.split(",")) if args.only else set(sets)
        work = tmp / "work"
        work.mkdir()

        rows = [bench_inprocess(name, d, work, args.repeats) for key, (name, d) in sets.items() if key in only]
        print(f"\nimages/s, in process, medians of {args.repeats} interleaved rounds (target: od 1 worker / floor >= 0.7)")
        print(format_table(
            ["dataset", "images", "MB/img", "shards", "floor, 1 worker", "od, 1 worker", "od, 2 workers",
             "od 1 / floor", "od 2 / od 1"],
            [(r["dataset"], r["images"], f"{r['mb']:.3f}", r["shards"], f"{r['floor']:.0f}", f"{r['od-1']:.0f}",
              f"{r['od-2']:.0f}", f"{r['od-1'] / r['floor']:.2f}", f"{r['od-2'] / r['od-1']:.2f}") for r in rows],
        ))

        fmt_rows = []
        for key, (name, d) in sets.items():
            if key in only and key.startswith("demo"):
                fmt_rows.append(bench_formats(name, make_format_inputs(d, tmp / "formats"), args.repeats, work))
        if fmt_rows:
            print(f"\nod.records images/s by input format, 1 worker, medians of {args.repeats} interleaved rounds "
                  "(the same images; target: COCO and YOLO / VOC >= 0.9)")
            print(format_table(
                ["dataset", "images"] + [f"{f.upper() if f != 'yolo' else 'YOLO'}" for f in FORMATS]
                + [f"{f.upper() if f != 'yolo' else 'YOLO'} / VOC" for f in FORMATS[1:]],
                [(r["dataset"], r["images"], *(f"{r[f]:.0f}" for f in FORMATS),
                  *(f"{r[f] / r['voc']:.2f}" for f in FORMATS[1:])) for r in fmt_rows],
            ))
            worst = min(r[f] / r["voc"] for r in fmt_rows for f in FORMATS[1:])
            print(f"formats: worst ratio {worst:.2f} (target >= 0.9: {'met' if worst >= 0.9 else 'NOT met'})")

        cli = [(name, d, w) for key, (name, d) in sets.items() if key in only
               for w in ((None, 1) if key == "raccoon" else (1, 2) if key.startswith("demo") else ())]
        if cli:
            results: dict[tuple, list] = {(name, w): [] for name, _, w in cli}
            for _ in range(args.cli_repeats):  # interleaved, like the rounds above
                for name, d, w in cli:
                    results[name, w].append(cli_run(d, work, w, env, od_root))
            print(f"\npython -m od.records end to end ({args.cli_repeats} runs each; memory: largest process, max)")
            print(format_table(
                ["dataset", "workers", "median s", "best s", "peak RSS MiB"],
                [(name, f"{w} (default)" if w is None else w, f"{statistics.median(t for t, _ in rs):.2f}",
                  f"{min(t for t, _ in rs):.2f}", f"{max(m for _, m in rs) / 2**20:.0f}")
                 for (name, w), rs in results.items()],
            ))
            if ("raccoon", None) in results:
                wall = statistics.median(t for t, _ in results["raccoon", None])
                print(f"raccoon: {wall:.2f} s wall (target < 2 s: {'met' if wall < 2 else 'NOT met'})")
            for w in (1, 2):
                a, b = results.get((f"demo-{args.small}", w)), results.get((f"demo-{args.images}", w))
                if a and b:
                    ma, mb_ = max(m for _, m in a) / 2**20, max(m for _, m in b) / 2**20
                    print(f"peak memory, {w} worker(s): {ma:.0f} MiB at {args.small} images, {mb_:.0f} MiB at "
                          f"{args.images} ({'flat' if mb_ <= 1.15 * ma else 'NOT flat'})")
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
