"""Pretrained checkpoints: a registry, a verified download cache, safe extraction, resolving a name or path.

Model Garden publishes ImageNet backbones and a few COCO detectors; od names them so a template can
say ``pretrained_checkpoint: resnet50_imagenet``. Files are fetched over HTTPS into ``~/.cache/od``
(``OD_CACHE``), checked against a sha256, and archives are unpacked so that no member can land
outside the cache or link out of it. Offline, the error says exactly which URL to fetch and where
to put it.

Checksums: where the registry has no published sha256 (Model Garden publishes none), the hash of
the first download is recorded in ``<cache>/<name>/SHA256SUMS`` and every later use is verified
against it (trust on first use). Nothing here invents a hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

GCS_HTTPS = "https://storage.googleapis.com/"
SUMS_FILE = "SHA256SUMS"
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
            contents="backbone (ResNet-50); what fasterrcnn_resnetfpn_coco fine-tunes from",
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_sums(d: Path) -> dict[str, str]:
    p = d / SUMS_FILE
    out: dict[str, str] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[1]] = parts[0]
    return out


def _write_sums(d: Path, sums: dict[str, str]) -> None:
    from od.io.files import atomic_write_text

    atomic_write_text(d / SUMS_FILE, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def _expected_hash(spec_file: RemoteFile, d: Path) -> str | None:
    return spec_file.sha256 or _read_sums(d).get(spec_file.filename)


def offline_help(spec: CheckpointSpec, missing: Iterable[RemoteFile], reason: str = "") -> str:
    d = cache_dir() / spec.name
    lines = [f"cannot download checkpoint {spec.name!r}" + (f" ({reason})" if reason else "") + ".",
             "Fetch these file(s) on a machine with internet access and put them here:"]
    for f in missing:
        lines.append(f"  {f.url}\n    -> {d / f.filename}")
    lines.append(f"e.g.  mkdir -p {d} && curl -L -o {d}/<file> <url>   (or set OD_CACHE to another cache folder)")
    lines.append("Then re-run; od verifies the files (and records their sha256 on first use).")
    return "\n".join(lines)


def _download(url: str, target: Path, expected: str | None, progress: bool = True) -> str:
    """HTTPS (or a local http:// test server) -> temp file -> sha256 check -> rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=target.name, file=sys.stderr)
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        digest = h.hexdigest()
        if expected and digest != expected:
            raise CheckpointError(
                f"{url}: sha256 mismatch (got {digest}, expected {expected}); the download is corrupt or "
                f"the file changed upstream. Nothing was kept; delete {target.parent / SUMS_FILE} only if "
                "you trust the new file."
            )
        os.replace(tmp, target)
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fetch(spec: CheckpointSpec, progress: bool = True) -> Path:
    """Make sure every file of ``spec`` is in the cache and verified; return the cache folder."""
    d = cache_dir() / spec.name
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
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(offline_help(spec, missing, reason=str(getattr(e, "reason", e)))) from e
        if not f.sha256:
            sums[f.filename] = digest
        missing.remove(f)
    _write_sums(d, sums)
    return d


# --------------------------------------------------------------------------- safe extraction

def _check_member(m: tarfile.TarInfo, root: Path, archive: str) -> None:
    name = m.name
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or (p.parts and len(p.parts[0]) == 2 and p.parts[0][1] == ":"):
        raise CheckpointError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if any(part == ".." for part in p.parts):
        raise CheckpointError(f"{archive}: member {name!r} escapes the target folder ('..'); refusing to extract")
    dest = (root / name).resolve()
    if not _inside(dest, root):
        raise CheckpointError(f"{archive}: member {name!r} would land outside {root}; refusing to extract")
    if m.issym() or m.islnk():
        link = PurePosixPath(m.linkname)
        if link.is_absolute():
            raise CheckpointError(f"{archive}: link {name!r} -> {m.linkname!r} points outside; refusing to extract")
        base = dest.parent if m.issym() else root
        if not _inside((base / m.linkname).resolve(), root):
            raise CheckpointError(f"{archive}: link {name!r} -> {m.linkname!r} points outside; refusing to extract")
    elif not (m.isfile() or m.isdir()):
        raise CheckpointError(f"{archive}: member {name!r} is a device/fifo; refusing to extract")


def _inside(path: Path, root: Path) -> bool:
    root = root.resolve()
    return path == root or root in path.parents


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tar(.gz) into ``target`` (created via a temp dir, so it appears whole or not at all).

    Every member is checked before anything is written: no absolute paths, no '..', no links
    leading outside, no devices. Python's own 'data' filter is applied as a second guard.
    """
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(archive) as tf_:
            members = tf_.getmembers()
            for m in members:
                _check_member(m, tmp, str(archive))
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf_.extractall(tmp, members=members, **kwargs)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except tarfile.TarError as e:
        raise CheckpointError(f"{archive}: not a readable tar archive ({e}); delete it to download again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
            archive = d / spec.files[0].filename
            out = d / "extracted"
            stamp = out / ".od-extracted"
            if not stamp.is_file() or stamp.read_text() != _sha256(archive):
                safe_extract(archive, out)
                stamp.write_text(_sha256(archive))
            found = find_checkpoint(str(out))
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
