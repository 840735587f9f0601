"""od.model checkpoints + finetune: verified downloads from a local HTTP server, safe extraction, fine-tune restore."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from od.model import checkpoints as ck
from od.model.finetune import restore_for_finetune

# --------------------------------------------------------------------------- a real local server

@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (bounded: daemon thread, shut down after the test)."""
    root = tmp_path / "www"
    root.mkdir()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a, **k: None})
    handler = functools.partial(quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("OD_CACHE", str(d))
    return d


def _spec(name, base, files, **kw):
    return ck.CheckpointSpec(name=name, description="test", contents="test",
                             files=tuple(ck.RemoteFile(f"{base}/{f}", f, h) for f, h in files), **kw)


def test_download_verifies_published_sha256(server, cache):
    root, base = server
    (root / "w.bin").write_bytes(b"weights" * 1000)
    good = hashlib.sha256(b"weights" * 1000).hexdigest()
    d = ck.fetch(_spec("good", base, [("w.bin", good)]), progress=False)
    assert (d / "w.bin").read_bytes() == b"weights" * 1000

    with pytest.raises(ck.CheckpointError, match="sha256 mismatch"):
        ck.fetch(_spec("bad", base, [("w.bin", "0" * 64)]), progress=False)
    assert not (cache / "bad" / "w.bin").exists()
    assert not list((cache / "bad").glob("*.part"))  # no half file left behind


def test_unpublished_hash_recorded_on_first_download_then_enforced(server, cache):
    root, base = server
    (root / "w.bin").write_bytes(b"v1")
    spec = _spec("tofu", base, [("w.bin", None)])
    d = ck.fetch(spec, progress=False)
    sums = (d / ck.SUMS_FILE).read_text()
    assert hashlib.sha256(b"v1").hexdigest() in sums
    # The cached file is verified on every use...
    (d / "w.bin").write_bytes(b"tampered")
    with pytest.raises(ck.CheckpointError, match="does not match"):
        ck.fetch(spec, progress=False)
    # ...and a changed upstream file is refused on re-download.
    (d / "w.bin").unlink()
    (root / "w.bin").write_bytes(b"v2")
    with pytest.raises(ck.CheckpointError, match="sha256 mismatch"):
        ck.fetch(spec, progress=False)


def test_offline_message_names_urls_and_destination(cache):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _spec("offline", f"http://127.0.0.1:{port}", [("a.index", None), ("a.data-00000-of-00001", None)])
    with pytest.raises(ck.CheckpointError) as e:
        ck.fetch(spec, progress=False)
    msg = str(e.value)
    for f in spec.files:
        assert f.url in msg
        assert str(cache / "offline" / f.filename) in msg


def test_registry_urls_are_https_model_garden():
    assert "resnet50_imagenet" in ck.REGISTRY and "retinanet_resnet50_fpn_coco" in ck.REGISTRY
    for spec in ck.REGISTRY.values():
        for f in spec.files:
            assert f.url.startswith("https://storage.googleapis.com/")
            assert f.sha256 is None or len(f.sha256) == 64
    assert ck.REGISTRY["retinanet_resnet50_fpn_coco"].files[0].url.endswith(
        "tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz")


def test_unknown_name_suggests_registry_names():
    with pytest.raises(ck.CheckpointError, match="resnet50_imagenet"):
        ck.resolve("resnet50_imagnet")


# --------------------------------------------------------------------------- safe extraction

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return path


def _file(name, data=b"x"):
    return tarfile.TarInfo(name), data


def _link(name, target, kind=tarfile.SYMTYPE):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = target
    return i, None


@pytest.mark.parametrize("bad", [
    [_file("../escape.txt")],
    [_file("ok/../../escape.txt")],
    [_file("/tmp/od_abs_escape.txt")],
    [_link("evil", "/etc/passwd")],
    [_link("evil", "../../escape.txt")],
    [_file("inner.txt"), _link("hard", "../escape.txt", tarfile.LNKTYPE)],
    [_link("dev", "", tarfile.CHRTYPE)],
])
def test_malicious_archives_are_refused_and_nothing_written(tmp_path, bad):
    arc = _tar(tmp_path / "evil.tar.gz", [_file("model/ckpt-1.index", b"i")] + bad)
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(ck.CheckpointError, match="refusing"):
        ck.safe_extract(arc, target)
    assert not target.exists()
    assert not (tmp_path / "a" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/od_abs_escape.txt").exists()
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == []  # temp dir cleaned up


@pytest.mark.parametrize("link", [_link("m/latest.index", "ckpt-5.index"),
                                  _link("m/latest.index", "m/ckpt-5.index", tarfile.LNKTYPE)])
def test_links_inside_the_archive_are_refused_too(tmp_path, link):
    """Even a link that points inside: a later member could be written through it."""
    arc = _tar(tmp_path / "ok.tar.gz", [_file("m/ckpt-5.index", b"i"), link])
    with pytest.raises(ck.CheckpointError, match="'m/latest.index' is a (symbolic|hard) link.*refusing"):
        ck.safe_extract(arc, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.tar.gz"]


def test_good_archive_extracts(tmp_path):
    arc = _tar(tmp_path / "ok.tar.gz", [_file("m/ckpt-5.index", b"i"), _file("m/ckpt-5.data-00000-of-00001", b"d")])
    out = ck.safe_extract(arc, tmp_path / "out")
    assert (out / "m" / "ckpt-5.index").read_bytes() == b"i"


def test_chained_links_cannot_make_od_write_outside_the_cache(tmp_path, server, cache, monkeypatch, capsys):
    """Each link looks inside when it is checked; together they lead out (stamp -> l/victim, l -> m/x/x/x/../../..,
    m -> ., x -> .). The old code wrote its stamp file through them, onto tmp_path/victim."""
    from od import checkpoints as cli

    root, base = server
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    _tar(root / "chain.tar.gz", [_link(ck.STAMP_FILE, "l/victim"), _link("l", "m/x/x/x/../../.."),
                                 _link("m", "."), _link("x", "."), _file("ckpt-1.index", b"i")])
    monkeypatch.setitem(ck.REGISTRY, "chain", _spec("chain", base, [("chain.tar.gz", None)]))
    rc = cli.main(["fetch", "chain"])
    assert victim.read_bytes() == b"precious"
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("od: error: ")
    assert str(cache / "chain" / "chain.tar.gz") in err[0] and repr(ck.STAMP_FILE) in err[0]
    assert not (cache / "chain" / "extracted").exists()
    assert "chain.tar.gz" not in (cache / "chain" / ck.SUMS_FILE).read_text()  # a refused archive is not trusted


def test_a_planted_link_in_the_cache_is_never_written_through(tmp_path, server, cache):
    """A cache folder an older od extracted may hold a link; od refuses to write below it."""
    root, base = server
    (root / "w.bin").write_bytes(b"w")
    outside = tmp_path / "outside"
    outside.mkdir()
    cache.mkdir()
    (cache / "planted").symlink_to(outside)
    with pytest.raises(ck.CheckpointError, match="symbolic link inside the checkpoint cache"):
        ck.fetch(_spec("planted", base, [("w.bin", None)]), progress=False)
    assert list(outside.iterdir()) == []


def test_truncated_archive_is_one_error_naming_url_and_path(tmp_path, server, cache, monkeypatch, capsys):
    from od import checkpoints as cli

    root, base = server
    good = _tar(tmp_path / "g.tar.gz", [_file("ckpt-1.index", b"i" * 5000)]).read_bytes()
    (root / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    monkeypatch.setitem(ck.REGISTRY, "cuttar", _spec("cuttar", base, [("cut.tar.gz", None)]))
    assert cli.main(["fetch", "cuttar"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable tar archive" in err[0]
    assert f"{base}/cut.tar.gz -> {cache / 'cuttar' / 'cut.tar.gz'}" in err[0]


# --------------------------------------------------------------------------- short and resumed downloads

class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves DATA; ``mode`` says how: cut (Content-Length N, closes after N/2), chunked-cut, resume
    (first request cut, a Range request answered 206). ``seen`` logs each request's Range header."""

    protocol_version = "HTTP/1.1"
    data = b""
    mode = "cut"
    seen: ClassVar[list] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        cls = type(self)
        rng = self.headers.get("Range")
        cls.seen.append(rng)
        self.close_connection = True
        n = len(cls.data)
        if cls.mode == "resume" and rng:
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
            self.send_header("Content-Length", str(n - start))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(cls.data[start:])
            return
        self.send_response(200)
        self.send_header("ETag", '"v1"')
        if cls.mode == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % n + cls.data[: n // 2])
            return
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(cls.data[: n // 2])


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(ck, "DOWNLOAD_TIMEOUT_S", 10)
    handler = type("Flaky", (_Flaky,), {"seen": [], "data": bytes(range(256)) * 400})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


@pytest.mark.parametrize("mode", ["cut", "chunked-cut"])
def test_cut_download_is_retried_once_then_refused_and_never_trusted(flaky, cache, monkeypatch, capsys, mode):
    from od import checkpoints as cli

    handler, base = flaky
    handler.mode = mode
    monkeypatch.setitem(ck.REGISTRY, "cut", _spec("cut", base, [("w.bin", None)]))
    assert cli.main(["fetch", "cut"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("od: error: "), err
    assert f"{base}/w.bin -> {cache / 'cut' / 'w.bin'}" in err[0]
    assert len(handler.seen) == 2  # one retry
    d = cache / "cut"
    assert not (d / "w.bin").exists() and not list(d.glob("*.part"))
    assert not (d / ck.SUMS_FILE).exists() or "w.bin" not in (d / ck.SUMS_FILE).read_text()


def test_cut_download_is_resumed_with_range_and_verified(flaky, cache):
    handler, base = flaky
    handler.mode = "resume"
    data = handler.data
    d = ck.fetch(_spec("resume", base, [("w.bin", hashlib.sha256(data).hexdigest())]), progress=False)
    assert (d / "w.bin").read_bytes() == data
    assert handler.seen == [None, f"bytes={len(data) // 2}-"]
    assert not list(d.glob("*.part"))


# --------------------------------------------------------------------------- restore (tiny models)

def _tiny(num_classes: int, width: int = 8):
    import tf_keras

    class Head(tf_keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self._convs, self._conv_norms = [], []
            self._fcs = [tf_keras.layers.Dense(6)]
            self._fc_norms = [tf_keras.layers.BatchNormalization()]
            self._classifier = tf_keras.layers.Dense(num_classes)
            self._box_regressor = tf_keras.layers.Dense(4 * num_classes)

        def call(self, x):
            x = self._fc_norms[0](self._fcs[0](x))
            return self._classifier(x), self._box_regressor(x)

    class Tiny(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.backbone = tf_keras.Sequential([tf_keras.layers.Dense(width), tf_keras.layers.Dense(width)])
            self.decoder = tf_keras.layers.Dense(5)
            self.rpn_head = tf_keras.layers.Dense(3)
            self.detection_head = [Head()]

        def call(self, x):
            f = self.decoder(self.backbone(x))
            return self.rpn_head(f), self.detection_head[0](f)

    import tensorflow as tf

    m = Tiny()
    m(tf.zeros([1, 4]))
    return m


def _save_like_trainer(model, path):
    """Model Garden's trainer checkpoint layout: model + its checkpoint_items at the top level."""
    import tensorflow as tf

    return tf.train.Checkpoint(model=model, backbone=model.backbone, decoder=model.decoder,
                               rpn_head=model.rpn_head, detection_head=model.detection_head).write(str(path))


def test_restore_backbone_and_heads_reinit_classifier(tmp_path):
    import numpy as np

    src = _tiny(num_classes=4)
    prefix = _save_like_trainer(src, tmp_path / "ckpt")
    dst = _tiny(num_classes=6)
    before_cls = dst.detection_head[0]._classifier.kernel.numpy().copy()
    logs: list[str] = []
    rep = restore_for_finetune(dst, prefix, "all", log=logs.append)
    for a, b in zip(src.backbone.variables, dst.backbone.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(src.decoder.variables + src.rpn_head.variables, dst.decoder.variables + dst.rpn_head.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(src.detection_head[0]._fcs[0].kernel.numpy(),
                                  dst.detection_head[0]._fcs[0].kernel.numpy())
    np.testing.assert_array_equal(dst.detection_head[0]._classifier.kernel.numpy(), before_cls)
    assert any("backbone" in r for r in rep.restored) and any("detection_head" in r for r in rep.restored)
    assert "detection_head.classifier" in rep.reinitialised
    assert any("re-initialised" in line for line in logs)


def test_part_with_other_shapes_is_left_untouched(tmp_path):
    import numpy as np

    src = _tiny(num_classes=3, width=8)
    prefix = _save_like_trainer(src, tmp_path / "ckpt")
    dst = _tiny(num_classes=3, width=16)  # backbone widths differ -> decoder input differs too
    before = [v.numpy().copy() for v in dst.backbone.variables]
    rep = restore_for_finetune(dst, prefix, "all", log=lambda m: None)
    for b, v in zip(before, dst.backbone.variables):
        np.testing.assert_array_equal(b, v.numpy())  # reverted, never half restored
    assert ("backbone" in dict(rep.not_restored)) and "shape" in dict(rep.not_restored)["backbone"]


def test_nothing_matching_is_a_clear_error(tmp_path):
    import tensorflow as tf

    prefix = tf.train.Checkpoint(something_else=tf.Variable([1.0, 2.0])).write(str(tmp_path / "other"))
    with pytest.raises(ck.CheckpointError, match="nothing in .* matches"):
        restore_for_finetune(_tiny(3), prefix, "all", log=lambda m: None)
    with pytest.raises(ck.CheckpointError, match="no such checkpoint|neither"):
        restore_for_finetune(_tiny(3), str(tmp_path / "missing"), "all", log=lambda m: None)


def test_archive_checkpoint_end_to_end_over_http(server, cache, monkeypatch):
    """Registry entry -> HTTP download -> sha256 -> safe extract -> prefix -> restore."""
    import numpy as np

    root, base = server
    src = _tiny(3)
    ckdir = root / "build" / "model"
    _save_like_trainer(src, ckdir / "ckpt-7")
    (ckdir / "checkpoint").write_text('model_checkpoint_path: "ckpt-7"\n')
    with tarfile.open(root / "m.tar.gz", "w:gz") as t:
        t.add(ckdir, arcname="model")
    sha = hashlib.sha256((root / "m.tar.gz").read_bytes()).hexdigest()
    spec = _spec("arch", base, [("m.tar.gz", sha)])
    monkeypatch.setitem(ck.REGISTRY, "arch", spec)
    prefix = ck.resolve("arch", progress=False)
    assert prefix.endswith("ckpt-7") and prefix.startswith(str(cache))
    dst = _tiny(5)
    restore_for_finetune(dst, prefix, ["backbone"], log=lambda m: None)
    np.testing.assert_array_equal(src.backbone.variables[0].numpy(), dst.backbone.variables[0].numpy())
    assert ck.resolve("arch", progress=False) == prefix  # cached: no second download needed
