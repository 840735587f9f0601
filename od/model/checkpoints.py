"""Pretrained checkpoints: a registry, a verified download cache, safe extraction, resolving a name or path.

Model Garden publishes ImageNet backbones and a few COCO detectors; od names them so a template can
say ``pretrained_checkpoint: resnet50_imagenet``. Files are fetched over HTTPS into ``~/.cache/od``
(``OD_CACHE``) under a ``.part`` name, kept only when the whole body arrived (``Content-Length``
bytes or a complete chunked body; one retry, resumed with HTTP Range where the server allows),
then checked against a sha256. Archives may hold only plain files and folders (no links, no
absolute or '..' paths), and od never writes through a link in the cache. Any network or archive
failure is one error line saying which URL to fetch by hand and the exact path to put it at.

Checksums: where the registry has no published sha256 (Model Garden publishes none), the hash of
the first download is recorded in ``<cache>/<name>/SHA256SUMS`` and every later use is verified
against it (trust on first use). Nothing here invents a hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gzip
import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

GCS_HTTPS = "https://storage.googleapis.com/"
SUMS_FILE = "SHA256SUMS"
STAMP_FILE = ".od-extracted"  # sha256 of the archive that was unpacked
DOWNLOAD_TIMEOUT_S = 60
CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, fetched, verified, extracted or restored (message says what to do)."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    url: str
    filename: str
    sha256: str | None = None  # None: not published; recorded on first download and verified after


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    name: str
    description: str
    contents: str  # which parts of a model it can initialise
    files: tuple[RemoteFile, ...]
    prefix: str | None = None  # checkpoint prefix inside the folder (None: found with tf.train.latest_checkpoint)
    source: str = ""  # where the URL is documented

    @property
    def is_archive(self) -> bool:
        return len(self.files) == 1 and self.files[0].filename.endswith((".tar.gz", ".tgz", ".tar"))


def _gcs(path: str) -> str:
    return GCS_HTTPS + path


_MG_DOC = "https://github.com/tensorflow/models/blob/master/official/vision/MODEL_GARDEN.md"

REGISTRY: dict[str, CheckpointSpec] = {
    s.name: s
    for s in (
        CheckpointSpec(
            name="resnet50_imagenet",
            description="ResNet-50 ImageNet classifier (Model Garden vision-2.0), 76.1 top-1",
            contents="backbone (ResNet-50); what fasterrcnn_resnetfpn_coco and classifier_resnet50_transfer fine-tune from",
            files=tuple(
                RemoteFile(_gcs(f"cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/{f}"), f)
                for f in ("checkpoint", "ckpt-28080.index", "ckpt-28080.data-00000-of-00001")
            ),
            prefix="ckpt-28080",
            source="official/vision/configs/maskrcnn.py (init_checkpoint of fasterrcnn_resnetfpn_coco)",
        ),
        CheckpointSpec(
            name="retinanet_resnet50_fpn_coco",
            description="RetinaNet ResNet-50 FPN 640x640, COCO 72 epochs, 36.8 box AP",
            contents="backbone (ResNet-50) + FPN + RetinaNet head (class-independent parts)",
            files=(RemoteFile(_gcs("tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz"),
                              "retinanet-resnet50fpn.tar.gz"),),
            source=_MG_DOC + " (COCO Object Detection Baselines, RetinaNet)",
        ),
        CheckpointSpec(
            name="retinanet_spinenet49_mobile_coco",
            description="RetinaNet Mobile SpineNet-49 384x384, COCO, 28.1 box AP",
            contents="backbone (SpineNet-49 mobile) + RetinaNet head (class-independent parts)",
            files=(RemoteFile(_gcs("tf_model_garden/vision/retinanet/spinenet49mobile.tar.gz"),
                              "spinenet49mobile.tar.gz"),),
            source=_MG_DOC + " (Mobile-size RetinaNet)",
        ),
        CheckpointSpec(
            name="resnet_rs50_i160_imagenet",
            description="ResNet-RS-50 ImageNet classifier at 160x160, 79.1 top-1",
            contents="backbone (ResNet-RS-50: resnet model_id 50, stem_type v1, se_ratio 0.25, resnetd_shortcut)",
            files=(RemoteFile(_gcs("tf_model_garden/vision/resnet-rs/resnet-rs-50-i160.tar.gz"),
                              "resnet-rs-50-i160.tar.gz"),),
            source=_MG_DOC + " (ResNet-RS models)",
        ),
    )
}


# --------------------------------------------------------------------------- cache + download

def cache_dir() -> Path:
    return Path(os.environ.get("OD_CACHE") or Path.home() / ".cache" / "od")


def _no_links(path: Path) -> None:
    """Refuse a symlink anywhere between the cache root and ``path``: od writes nothing through one.

    The root itself may be a link the user made (``~/.cache -> /data``); below it od creates
    only real folders, so a link there was planted (by an archive an older od extracted).
    """
    root = cache_dir()
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return
    p = root
    for part in parts:
        p = p / part
        if p.is_symlink():
            raise CheckpointError(f"{p}: is a symbolic link inside the checkpoint cache (planted by an archive?); "
                                  "od writes nothing through links: delete it and re-run")


def _sha256(path: Path) -> str:
    from od.io.files import open_regular

    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_sums(d: Path) -> dict[str, str]:
    from od.io.files import read_file

    p = d / SUMS_FILE
    out: dict[str, str] = {}
    if p.is_file():
        for line in read_file(p).decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[1]] = parts[0]
    return out


def _write_sums(d: Path, sums: dict[str, str]) -> None:
    from od.io.files import atomic_write_text

    _no_links(d)
    atomic_write_text(d / SUMS_FILE, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))  # rename: no follow


def _expected_hash(spec_file: RemoteFile, d: Path) -> str | None:
    return spec_file.sha256 or _read_sums(d).get(spec_file.filename)


def fetch_by_hand(files: Iterable[tuple[str, Path]]) -> str:
    """The one-line advice: which URL to fetch by hand and the exact cache path to put it at."""
    todo = "; ".join(f"{url} -> {path}" for url, path in files)
    return (f"fetch by hand and put in place: {todo} (e.g. curl -L -o PATH URL; or set OD_CACHE), "
            "then re-run: od verifies the file and records its sha256")


def offline_help(spec: CheckpointSpec, missing: Iterable[RemoteFile], reason: str = "") -> str:
    d = cache_dir() / spec.name
    return (f"cannot download checkpoint {spec.name!r}" + (f" ({reason})" if reason else "") + "; "
            + fetch_by_hand((f.url, d / f.filename) for f in missing))


class _Cut(Exception):
    """A body that ended before its Content-Length (http.client returns b'' for that, it does not raise)."""


def _why(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return "the server closed the connection before the chunked body was complete"
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, _Cut):
        return str(e)
    return f"{type(e).__name__}: {getattr(e, 'reason', None) or getattr(e, 'strerror', None) or e}"


def _transfer(url: str, part: Path, state: dict, progress: bool) -> None:
    """One GET into ``part``; resumes with HTTP Range from what ``part`` holds. Raises on any short body."""
    have = os.lstat(part).st_size if os.path.lexists(part) else 0
    headers = {"User-Agent": "od"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if state.get("validator"):
            headers["If-Range"] = state["validator"]  # a changed file comes back whole (200), never spliced
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT_S) as resp:
        state["validator"] = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        start = 0
        if resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != have:
                raise _Cut(f"bad Content-Range {resp.headers.get('Content-Range')!r} for a resume at byte {have}")
            start = have
        length = None if resp.chunked or resp.headers.get("Content-Length") is None else int(resp.headers["Content-Length"])
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if start else os.O_TRUNC)
        fd = os.open(part, flags, 0o666)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CheckpointError(f"{part}: not a regular file; delete it and re-run")
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=length and start + length, initial=start, unit="B", unit_scale=True, desc=part.name,
                       file=sys.stderr)
        got = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if length is not None and got != length:
            raise _Cut(f"server closed after {start + got} of {start + length} bytes")


def _download(url: str, target: Path, expected: str | None, progress: bool = True) -> str:
    """URL -> ``<target>.part`` (retried or resumed once) -> complete? -> sha256 check -> rename to ``target``.

    Raises CheckpointError for a hash mismatch; the network/short-body error of the second try otherwise.
    A part that did not arrive whole is deleted, never renamed and never hashed into SHA256SUMS.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _no_links(target.parent)
    part = target.with_name(target.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)  # left by a killed run: start clean (a resume needs this run's validator)
    state: dict = {}
    try:
        for attempt in (1, 2):
            try:
                _transfer(url, part, state, progress)
                break
            except (OSError, http.client.HTTPException, ValueError, _Cut):
                if attempt == 2:
                    raise
        digest = _sha256(part)
        if expected and digest != expected:
            raise CheckpointError(
                f"{url}: sha256 mismatch (got {digest}, expected {expected}); the download is corrupt or "
                f"the file changed upstream. Nothing was kept; delete {target.parent / SUMS_FILE} only if "
                "you trust the new file."
            )
        os.replace(part, target)  # rename replaces a link at target, never writes through it
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def fetch(spec: CheckpointSpec, progress: bool = True) -> Path:
    """Make sure every file of ``spec`` is in the cache and verified; return the cache folder."""
    d = cache_dir() / spec.name
    _no_links(d)
    d.mkdir(parents=True, exist_ok=True)
    sums = _read_sums(d)
    missing: list[RemoteFile] = []
    for f in spec.files:
        target = d / f.filename
        expected = _expected_hash(f, d)
        if target.is_file():
            got = _sha256(target)
            if expected and got != expected:
                raise CheckpointError(
                    f"{target}: sha256 {got} does not match {expected} "
                    f"({'registry' if f.sha256 else d / SUMS_FILE}); delete the file to download it again"
                )
            if not expected:
                sums[f.filename] = got  # a file the user placed by hand: record it now
            continue
        missing.append(f)
    for f in list(missing):
        try:
            digest = _download(f.url, d / f.filename, _expected_hash(f, d), progress=progress)
        except (OSError, http.client.HTTPException, ValueError, _Cut) as e:
            raise CheckpointError(offline_help(spec, missing, reason=_why(e) + ", tried twice")) from None
        if not f.sha256:
            sums[f.filename] = digest
        missing.remove(f)
    _write_sums(d, sums)
    return d


# --------------------------------------------------------------------------- safe extraction

def _check_member(m: tarfile.TarInfo, root: Path, archive: str) -> None:
    name = m.name
    p = PurePosixPath(name)
    if m.issym() or m.islnk():
        kind = "a symbolic link" if m.issym() else "a hard link"
        raise CheckpointError(f"{archive}: member {name!r} is {kind} (-> {m.linkname!r}); a checkpoint needs no "
                              "links, refusing to extract")
    if not (m.isfile() or m.isdir()):
        raise CheckpointError(f"{archive}: member {name!r} is a device/fifo; refusing to extract")
    if p.is_absolute() or name.startswith(("/", "\\")) or (p.parts and len(p.parts[0]) == 2 and p.parts[0][1] == ":"):
        raise CheckpointError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if any(part == ".." for part in p.parts):
        raise CheckpointError(f"{archive}: member {name!r} escapes the target folder ('..'); refusing to extract")
    if not _inside((root / name).resolve(), root):
        raise CheckpointError(f"{archive}: member {name!r} would land outside {root}; refusing to extract")


def _inside(path: Path, root: Path) -> bool:
    root = root.resolve()
    return path == root or root in path.parents


def _has_links(folder: Path) -> bool:
    for top, dirs, files in os.walk(folder):  # followlinks=False: a linked folder is listed, not entered
        if any(os.path.islink(os.path.join(top, n)) for n in dirs + files):
            return True
    return False


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tar(.gz) into ``target`` (created via a temp dir, so it appears whole or not at all).

    Every member is checked before anything is written: only plain files and folders (no links
    of either kind: a link created by one member can redirect a later one), no absolute paths,
    no '..'. Python's own 'data' filter is applied as a second guard.
    """
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(archive) as tf_:
            members = tf_.getmembers()
            for m in members:
                _check_member(m, tmp, str(archive))
            tf_.extractall(tmp, members=members, filter="data")
        if os.path.islink(target):
            os.unlink(target)
        elif target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CheckpointError(f"{archive}: not a readable tar archive ({e}); refusing to extract") from None
    except OSError as e:
        raise CheckpointError(f"{archive}: cannot extract into {target}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extracted(spec: CheckpointSpec, d: Path) -> Path:
    """The archive of ``spec`` unpacked in ``d/extracted`` (again when the archive changed or links are there)."""
    from od.io.files import atomic_write_text, read_file

    f = spec.files[0]
    archive, out = d / f.filename, d / "extracted"
    _no_links(out)
    stamp = out / STAMP_FILE
    digest = _sha256(archive)
    done = stamp.is_file() and not stamp.is_symlink() and read_file(stamp).decode("ascii", "replace") == digest
    if not done or _has_links(out):
        try:
            safe_extract(archive, out)
        except CheckpointError as e:
            sums = _read_sums(d)
            if sums.pop(f.filename, None) is not None:
                _write_sums(d, sums)  # an archive od refuses is not trusted on first use either
            raise CheckpointError(f"{e}; delete {archive} and re-run, or {fetch_by_hand([(f.url, archive)])}") from None
        atomic_write_text(stamp, digest)  # temp file + rename inside a folder od just made: never through a link
    return out


# --------------------------------------------------------------------------- resolve

def is_ckpt_prefix(p: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(p + ".index")


def find_checkpoint(folder: str) -> str | None:
    """A checkpoint prefix in ``folder`` (its 'checkpoint' file, else the newest *.index anywhere below)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(folder)
    if latest:
        return latest
    indexes = sorted(Path(folder).rglob("*.index"), key=lambda p: (len(p.parts), str(p))) if "://" not in folder else []
    return str(indexes[0])[: -len(".index")] if indexes else None


def resolve(name_or_path: str, progress: bool = True) -> str:
    """Registry name or path (local or gs://) -> a checkpoint prefix TF can read."""
    s = str(name_or_path)
    if s in REGISTRY:
        spec = REGISTRY[s]
        d = fetch(spec, progress=progress)
        if spec.is_archive:
            found = find_checkpoint(str(_extracted(spec, d)))
        else:
            found = str(d / spec.prefix) if spec.prefix else find_checkpoint(str(d))
        if not found or not is_ckpt_prefix(found):
            raise CheckpointError(f"checkpoint {s!r}: no checkpoint (*.index) found in {d}")
        return found
    if "://" in s:
        import tensorflow as tf

        if is_ckpt_prefix(s):
            return s
        if tf.io.gfile.isdir(s):
            found = find_checkpoint(s)
            if found:
                return found
        raise CheckpointError(f"{s}: no checkpoint there (expected PREFIX.index or a folder with a 'checkpoint' file)")
    p = Path(s).expanduser()
    if p.is_dir():
        found = find_checkpoint(str(p))
        if found:
            return found
        raise CheckpointError(f"{p}: folder has no checkpoint (no 'checkpoint' file or *.index)")
    if Path(str(p) + ".index").is_file():
        return str(p)
    if p.suffix in (".index",) and p.is_file():
        return str(p)[: -len(".index")]
    close = difflib.get_close_matches(s, list(REGISTRY), n=3)
    raise CheckpointError(
        f"checkpoint {s!r} is neither a registry name nor an existing checkpoint path "
        f"(PREFIX.index or a folder){'; did you mean ' + ', '.join(close) + '?' if close else ''} "
        f"Registry: {', '.join(REGISTRY)}"
    )
