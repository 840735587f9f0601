"""``python -m od.classify``: run an exported classifier on photos and say what each one shows.

The successor of TensorFlow's ``label_image.py``: prints the top-k classes of every image as
``name (score = 0.91234)``. Reads what ``od.export`` wrote for a classifier
(``exported/<name>/{saved_model,label_map.pbtxt,model.json}``) through
:class:`od.model.classifier.Classifier`, the one classification path. Optional outputs under
``--out`` (default ``classifications/``): every image's scores as JSON and CSV, and copies with the
top label drawn on; ``--sort-into DIR`` copies each image into a folder per predicted class.
Inputs are never modified, and nothing is overwritten that od.classify did not write.

TensorFlow is imported only after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import filecmp
import io
import json
import os
import secrets
import shutil
import stat
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.data.inputs import InputImage, collect_inputs
from od.io.files import file_problem, open_regular, shown
from od.model.errors import ModelError
from od.model.source import resolve_labels, resolve_model
from od.options import add_common, add_force, fraction, positive_int, quiet_tensorflow
from od.viz.outputs import Manifest, OutputError, OutputWriter, check_out_dir, encode_image, safe_name

if TYPE_CHECKING:
    from od.model.classifier import Classifier, Prediction

DEFAULT_OUT = Path("classifications")
COMBINED = "classifications"  # <out>/classifications.json and <out>/classifications.csv
UNSURE = "unsure"  # the predicted "class" of an image whose top score is below --score-threshold
DEFAULT_TOP_K = 5
CSV_FIXED = ("path", "top1_class", "top1_score", "unsure")


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m od.classify",
        description=(
            "Classify images with an exported classifier: the top-k classes of each image with their\n"
            "scores. Folders are searched recursively; the inputs are never modified."
        ),
        epilog=(
            "Examples:\n"
            "  python -m od.classify photos/                       # newest model under exported/\n"
            "  python -m od.classify 'shots/*.jpg' --model exported/shapes --top-k 3 --save-csv\n"
            "  python -m od.classify new/ --score-threshold 0.6 --sort-into sorted/   # sorted/<class>/, sorted/unsure/\n"
            "Exit codes: 0 all images done, 1 some images failed, 2 usage error (bad flag, no model)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--model",
        metavar="PATH|NAME",
        help="classification export dir (exported/<name>), its name, or a SavedModel dir "
        "(default: the newest export under exported/)",
    )
    p.add_argument("--label-map", metavar="PATH", help="label_map.pbtxt (default: the one inside the export; else numeric class ids)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help=f"classes shown per image, the most likely first (default {DEFAULT_TOP_K}, or the class count when fewer)")
    # one flag per concept (README "CLI conventions"): the score threshold is --score-threshold everywhere;
    # --threshold is accepted too, the name label_image.py users reach for
    p.add_argument("--score-threshold", "--threshold", dest="score_threshold", type=fraction(), default=None, metavar="T",
                   help="minimum score of the top class, in [0, 1]; below it the image is reported "
                   f"'{UNSURE}' (default: none, the top class always wins)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder for --save-json/--save-csv/--save-images (default {DEFAULT_OUT}/)")
    p.add_argument("--save-json", action="store_true", help=f"write <out>/{COMBINED}.json: every image's top-k and all scores")
    p.add_argument("--save-csv", action="store_true",
                   help=f"write <out>/{COMBINED}.csv: a row per image (path, top-1 class and score, unsure, a column per class)")
    p.add_argument("--save-images", action="store_true", help="write a copy of each image with its top label drawn on, under <out>/")
    p.add_argument("--sort-into", metavar="DIR",
                   help=f"copy each image (byte for byte) into DIR/<predicted class>/ or DIR/{UNSURE}/; "
                   "never moves or replaces a file (a taken name gets _1, _2...)")
    add_force(p, "files in --out that od.classify did not write (its manifest lists its own); never files in --sort-into")
    add_common(p)
    return p


# --------------------------------------------------------------------------- one image


@dataclass
class Classified:
    """What happened to one image: its top-k, every class's score, and where copies went."""

    image: InputImage
    width: int = 0
    height: int = 0
    top: list[Prediction] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # class name -> probability, label order
    unsure: bool = False
    annotated: Path | None = None
    sorted_to: Path | None = None
    error: str | None = None

    @property
    def predicted(self) -> str:
        return UNSURE if self.unsure else self.top[0].name


def effective_top_k(requested: int | None, num_classes: int) -> int:
    """``--top-k`` clamped to the class count (default: 5, or all classes when fewer)."""
    k = DEFAULT_TOP_K if requested is None else requested
    return max(1, min(k, num_classes))


def image_lines(res: Classified, threshold: float | None) -> str:
    """``path: circle 0.91`` (or ``path: unsure (circle 0.41 < 0.50)``), then label_image.py's
    ``  name (score = 0.91234)`` per class of the top-k."""
    best = res.top[0]
    head = (f"{UNSURE} ({best.name} {best.score:.3f} < {threshold:g})" if res.unsure and threshold is not None
            else f"{best.name} {best.score:.2f}")
    lines = [f"{shown(res.image.path)}: {head}"]
    lines += [f"  {p.name} (score = {p.score:.5f})" for p in res.top]
    return "\n".join(lines)


def record(res: Classified) -> dict:
    """The JSON of one classified image."""
    return {
        "image": shown(res.image.path),
        "width": res.width,
        "height": res.height,
        "top_k": [{"class": p.name, "id": p.class_id, "score": p.score} for p in res.top],
        "scores": dict(res.scores),
        "predicted": res.predicted,
        "unsure": res.unsure,
        "annotated": shown(res.annotated) if res.annotated else None,
        "sorted_to": shown(res.sorted_to) if res.sorted_to else None,
    }


def csv_text(results: Sequence[Classified], labels: Sequence[str]) -> str:
    """A row per image: path, top-1 class and score, unsure, then a column per class (a class named
    like a fixed column gets ``score:`` in front)."""
    cols = [f"score:{n}" if n in CSV_FIXED else n for n in labels]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_FIXED, *cols])
    for r in results:
        best = r.top[0]
        w.writerow([shown(r.image.path), best.name, repr(best.score), str(r.unsure).lower(),
                    *(repr(r.scores.get(n, float("nan"))) for n in labels)])
    return buf.getvalue()


def copy_into(src: Path, folder: Path) -> Path:
    """Copy ``src`` byte for byte, with its times and mode (like ``shutil.copy2``), into ``folder``
    under its own name, or ``name_1``, ``name_2``... when that is taken: never replaces a file. A
    byte-identical copy already there (a re-run) is that copy: no ``name_1`` duplicate is made.
    Written under a temp name, then hard-linked to the free name (the link fails instead of
    replacing, so two runs cannot race onto one name); renamed where links are not supported."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{src.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open_regular(src) as f, open(tmp, "xb") as g:  # regular files only: a FIFO never blocks
            shutil.copyfileobj(f, g)
        shutil.copystat(src, tmp)
        stem, suffix = Path(src.name).stem, Path(src.name).suffix
        n = 0
        while True:
            dest = folder / (src.name if n == 0 else f"{stem}_{n}{suffix}")
            if _same_file_there(tmp, dest):
                return dest
            if not os.path.lexists(dest):
                try:
                    os.link(tmp, dest)
                    return dest
                except FileExistsError:
                    pass
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                        raise
                    os.replace(tmp, dest)  # no hard links here: just checked that dest is free
                    return dest
            n += 1
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _same_file_there(copy: Path, dest: Path) -> bool:
    """``dest`` is a regular file with ``copy``'s bytes (never follows a link or opens a FIFO)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != os.path.getsize(copy):
        return False
    return filecmp.cmp(copy, dest, shallow=False)


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    rp = path.resolve()
    return any(f == rp.parent or f in rp.parents for f in folders)


# --------------------------------------------------------------------------- the run


def run(
    classifier: Classifier,
    images: Sequence[InputImage],
    top_k: int,
    threshold: float | None,
    image_writer: OutputWriter | None = None,
    sort_into: Path | None = None,
    progress: bool = True,
) -> list[Classified]:
    """Classify every image, the next one decoded in a background thread while the model runs;
    with ``image_writer``, a labelled copy of each goes to its folder, with ``sort_into`` a plain
    copy to ``sort_into/<class>/``. One bad image (or one failed copy) is reported and skipped."""
    from tqdm import tqdm

    from od.data.images import open_image_rgb
    from od.viz.label import classification_label, draw_label

    def load(item: InputImage):
        why = file_problem(item.path)
        if why is not None:
            return item, None, f"{shown(item.path)}: {why}"
        try:
            return item, open_image_rgb(item.path), None
        except Exception as e:  # noqa: BLE001 - ImageError, plus anything odd a decoder raises
            msg = str(e) if str(item.path) in str(e) else f"{item.path}: {e}"
            return item, None, shown(msg)

    results: list[Classified] = []
    # disable=None: a bar on terminals only (logs and pipes get the per-image lines alone)
    bar = tqdm(total=len(images), unit="img", disable=None if progress and len(images) > 1 else True,
               file=sys.stderr, dynamic_ncols=True)

    def emit(res: Classified) -> None:
        if res.error:
            error(res.error)
        elif bar.disable:
            print(image_lines(res, threshold), flush=True)
        else:
            tqdm.write(image_lines(res, threshold), file=sys.stdout)
        results.append(res)
        bar.update(1)

    def outputs(res: Classified, img) -> str | None:
        """Write the labelled copy and the sorted copy; why one failed, or None."""
        item = res.image
        if image_writer is not None:
            best = res.top[0]
            path = image_writer.annotated_path(item)
            drawn = draw_label(img, classification_label(best.name, best.score, res.unsure),
                               None if res.unsure else best.class_id)
            problem = image_writer.write_file(path, encode_image(drawn, path))
            if problem:
                return f"{shown(item.path)}: {problem}"
            res.annotated = path
        if sort_into is not None:
            try:
                res.sorted_to = copy_into(item.path, sort_into / safe_name(res.predicted))
            except OSError as e:
                return f"{shown(item.path)}: cannot copy into {shown(sort_into)}/: {e.strerror or e}"
        return None

    with ThreadPoolExecutor(1, thread_name_prefix="od-load") as loader:
        queue = iter(images)
        loading = deque(loader.submit(load, it) for it in (next(queue, None) for _ in range(2)) if it is not None)
        while loading:
            item, img, err = loading.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                loading.append(loader.submit(load, nxt))
            if err is not None:
                emit(Classified(item, error=err))
                continue
            try:
                probs = classifier.probabilities(img)
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001 - one image the model chokes on must not stop the batch
                emit(Classified(item, img.width, img.height,
                                error=shown(f"{item.path}: classification failed: {type(e).__name__}: {e}")))
                continue
            ranked = classifier.top_k(probs, len(probs))
            res = Classified(item, img.width, img.height, top=ranked[:top_k],
                             scores={p.name: p.score for p in sorted(ranked, key=lambda p: p.index)},
                             unsure=threshold is not None and ranked[0].score < threshold)
            try:
                res.error = outputs(res, img)
            except Exception as e:  # noqa: BLE001 - disk full, permissions...: report, go on
                res.error = shown(f"{item.path}: cannot write outputs: {e}")
            emit(res)
    bar.close()
    return results


def _summary(results: Sequence[Classified], failed_inputs: int, elapsed: float) -> None:
    done = [r for r in results if not r.error]
    failed = len(results) - len(done) + failed_inputs
    counts = Counter(r.predicted for r in done)
    print()
    if counts:
        rows = sorted(counts.items(), key=lambda kv: (kv[0] == UNSURE, -kv[1], kv[0]))
        print_table(["predicted", "images"], rows)
    per_image = elapsed / len(results) if results else 0.0
    print(f"{len(done)} image(s) classified, {counts.get(UNSURE, 0)} {UNSURE}, {failed} failed, "
          f"{per_image:.3f} s/image")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)

    writing = args.save_json or args.save_csv or args.save_images
    out = Path(args.out) if args.out else DEFAULT_OUT
    manifest = None
    if writing:
        if not args.out:
            note_default("output folder", f"{out}/")
        problem = check_out_dir(out)  # before the model loads: a bad --out is said at once
        if problem:
            error(problem)
            return EXIT_USAGE
        try:
            manifest = Manifest.load(out, args.force, step="od.classify")
        except OutputError as e:
            error(str(e))
            return EXIT_USAGE
    elif args.out or args.force:
        warn("--out/--force are for --save-json, --save-csv and --save-images; nothing is written to --out")
    sort_into = Path(args.sort_into) if args.sort_into else None
    if sort_into is not None:
        problem = check_out_dir(sort_into, "--sort-into")
        if problem:
            error(problem)
            return EXIT_USAGE
    try:
        source = resolve_model(args.model)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    task = source.model_json.get("task")
    if task and task != "classification":  # od's model.json says so: no need to load TensorFlow
        error(f"{source.ref} is a {task} export, not a classifier; use python -m od.detect with it")
        return EXIT_USAGE

    images, input_problems = collect_inputs(args.inputs, out)
    input_problems = [shown(p) for p in input_problems]
    for p in input_problems:
        error(p)
    if not images:
        error("no images to process (" + ", ".join(shown(i) for i in args.inputs) + ")")
        return EXIT_USAGE

    id_to_name, labels_from = resolve_labels(source, args.label_map)
    if labels_from and labels_from != args.label_map:
        note_default("label map", labels_from)

    from od.model.classifier import Classifier

    t0 = time.perf_counter()
    try:
        classifier = Classifier.load(source, id_to_name)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    load_s = time.perf_counter() - t0
    labels = classifier.labels

    if sort_into is not None:  # a re-run over a folder holding the sorted copies skips them
        folders = [(sort_into / safe_name(n)).resolve() for n in [*labels, UNSURE]]
        own = {i for i in images if _inside(i.path, folders)}
        if own:
            print(f"od: note: skipping {len(own)} image(s) in {shown(sort_into)}/<class>/ (od.classify's sorted copies)",
                  file=sys.stderr)
            images = [i for i in images if i not in own]
            if not images:
                error("no images to process: all are copies in " + shown(sort_into))
                return EXIT_USAGE

    top_k = effective_top_k(args.top_k, len(labels))
    if args.top_k is not None and args.top_k > top_k:
        print(f"od: note: --top-k {args.top_k} is more than the model's {len(labels)} classes; showing {top_k}",
              file=sys.stderr)
    meta = {"model": source.ref, "label_map": labels_from or None, "top_k": top_k,
            "score_threshold": args.score_threshold, "classes": list(labels)}
    writer = None
    if writing:
        writer = OutputWriter(out, [i.path for i in images], False, False, False, args.force, meta, manifest)
    print(f"od.classify: {len(images)} image(s), model {source.ref} (TensorFlow + model loaded in {load_s:.1f}s), "
          f"{len(labels)} classes, top {top_k}"
          + (f", score threshold {args.score_threshold}" if args.score_threshold is not None else ""), file=sys.stderr)
    t1 = time.perf_counter()
    try:
        results = run(classifier, images, top_k, args.score_threshold, writer if args.save_images else None,
                      sort_into, progress=not args.quiet)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    finally:
        if writer is not None:
            writer.finish()
    elapsed = time.perf_counter() - t1

    done = [r for r in results if not r.error]
    failed = [r for r in results if r.error]
    wrote: list[str] = []
    if writer is not None:
        tables: list[tuple[Path, bytes]] = []
        if args.save_json:
            combined = {**meta, "images": [record(r) for r in done],
                        "failed": [{"image": shown(r.image.path), "error": r.error} for r in failed]}
            tables.append((out / f"{COMBINED}.json", (json.dumps(combined, indent=2) + "\n").encode()))
        if args.save_csv:
            tables.append((out / f"{COMBINED}.csv", csv_text(done, labels).encode()))
        for path, data in tables:
            problem = writer.write_file(path, data)
            if problem:
                error(problem)
                input_problems.append(problem)
            else:
                wrote.append(shown(path))
        writer.finish()

    _summary(results, len(input_problems), elapsed)
    if writer is not None:
        if args.save_images:
            wrote.insert(0, f"labelled copies in {shown(out)}/")
        if wrote:
            print("wrote: " + ", ".join(wrote))
    if sort_into is not None:
        print(f"sorted copies in {shown(sort_into)}/<class>/ ({sum(1 for r in done if r.sorted_to)} image(s))")
    if failed or input_problems:
        for msg in [*input_problems, *(r.error for r in failed)]:
            print(f"  failed: {msg}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def cli() -> None:
    """Console entry point: ``main`` then a fast exit (as ``od.detect``): with a model loaded,
    TensorFlow's teardown at interpreter exit takes seconds, and by then every output is written."""
    rc = main()
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
