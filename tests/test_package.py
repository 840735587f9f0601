"""Packaging: one version, templates found as package data, and a built wheel that works outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import pytest

import od
from od.model.errors import ConfigError
from od.model.templates import available_templates, find_template, load_template

REPO = Path(__file__).resolve().parents[1]
CPU = "faster_rcnn_resnet18_fpn_cpu"
# What a build needs, plus tests/ so the wheel can be shown to leave them out.
SOURCES = ("pyproject.toml", "README.md", "od", "tests", "pipeline_configs")


def _source_copy(dst: Path) -> Path:
    """Builds leave build/ and od.egg-info behind: build from a copy, never in the checkout."""
    dst.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dst / name)
        elif src.is_dir():
            shutil.copytree(src, dst / name, ignore=skip)
        else:
            shutil.copy2(src, dst / name)
    return dst


def _shipped() -> list[str]:
    return sorted(p.name for p in (resources.files("od") / "pipeline_configs").iterdir() if p.name.endswith(".yaml"))


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_version_is_the_one_the_build_metadata_carries(tmp_path):
    """pyproject takes the version from od.__version__: change it in a copy and the built METADATA follows."""
    src = _source_copy(tmp_path / "src")
    code = "from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel('meta'))"
    for version in (od.__version__, "9.8.7.dev1"):
        init = src / "od" / "__init__.py"
        init.write_text(init.read_text().replace(f'__version__ = "{od.__version__}"', f'__version__ = "{version}"'))
        shutil.rmtree(src / "meta", ignore_errors=True)
        (src / "meta").mkdir()
        info = _run([sys.executable, "-c", code], cwd=src).stdout.strip().splitlines()[-1]
        assert f"Version: {version}" in (src / "meta" / info / "METADATA").read_text().splitlines()


def test_every_template_resolves_through_package_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the lookup must not depend on the current folder
    shipped = _shipped()
    assert f"{CPU}.yaml" in shipped and len(shipped) >= 3
    # The top-level pipeline_configs/ users read and copy from is the same folder, not a second copy.
    assert sorted(p.name for p in (REPO / "pipeline_configs").glob("*.yaml")) == shipped
    assert (REPO / "pipeline_configs").resolve() == (REPO / "od" / "pipeline_configs").resolve()
    assert available_templates() == [n[:-5] for n in shipped]
    for n in shipped:
        path = find_template(n[:-5])
        assert path.parent == Path(str(resources.files("od"))) / "pipeline_configs"  # the package's copy
        assert path.read_bytes() == (resources.files("od") / "pipeline_configs" / n).read_bytes()
        assert load_template(n[:-5])[0]["template"] == n[:-5]
    mine = tmp_path / "mine.yaml"  # a user's own YAML path still works
    mine.write_text((resources.files("od") / "pipeline_configs" / f"{CPU}.yaml").read_text())
    assert find_template(str(mine)) == mine and load_template(mine)[0]["template"] == "mine"
    with pytest.raises(ConfigError) as e:
        find_template("no_such_template")
    assert all(n[:-5] in str(e.value) for n in shipped)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel, built from a copy of the checkout and installed into a fresh venv outside it.

    Only od comes from the wheel (pip install --no-deps --no-index); the dependencies (TensorFlow etc.,
    3.4 GB; a real install from this machine's local index takes 2 min 20 s and pip's cache holds none of
    it) come from the running interpreter's site-packages through a .pth file, which puts them on sys.path
    after the venv's own site-packages. The tests check that od itself is imported from the venv.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src])
    (wheel,) = dist.glob("od-*.whl")
    code = "from setuptools import build_meta as b; print(b.build_sdist('sdist'))"
    sdist = src / "sdist" / _run([sys.executable, "-c", code], cwd=src).stdout.strip().splitlines()[-1]
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    vpy = venv / "bin" / "python"
    _run([vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], env=env)
    site = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_od_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return {"wheel": wheel, "sdist": sdist, "bin": venv / "bin", "site": site, "env": env}


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_works_from_an_empty_folder(wheel_venv, tmp_path):
    """From an empty folder (no checkout, no PYTHONPATH): od-demo -> od-records -> od-configs render.

    (od-train --steps 1 the same way passes too but takes 1:47-2:43 on 2 shared cores: left out.)
    """
    w = wheel_venv
    names = zipfile.ZipFile(w["wheel"]).namelist()
    assert {f"od/pipeline_configs/{n}" for n in _shipped()} <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "conftest" in n]
    with tarfile.open(w["sdist"]) as tf:  # real files in the sdist, not the symlink
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
    assert all(members[f"od/pipeline_configs/{n}"].isfile() for n in _shipped())

    env, bin_ = w["env"], w["bin"]
    code = "import od, importlib.metadata as m; print(od.__file__, od.__version__, m.version('od'))"
    where = _run([bin_ / "python", "-c", code], cwd=tmp_path, env=env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(w["site"].resolve()), where
    assert not Path(where[0]).resolve().is_relative_to(REPO.resolve())
    assert where[1] == where[2] == od.__version__
    assert "usage" in _run([bin_ / "od-records", "--help"], cwd=tmp_path, env=env).stdout

    _run([bin_ / "od-demo", "--out", "data", "--num-images", "6"], cwd=tmp_path, env=env)
    _run([bin_ / "od-records", "data", "--out", "records", "--label-map", "lm.pbtxt", "--workers", "1"],
         cwd=tmp_path, env=env)
    report = json.loads((tmp_path / "records" / "report.json").read_text())
    listed = _run([bin_ / "od-configs", "list"], cwd=tmp_path, env=env).stdout
    assert all(n[:-5] in listed for n in _shipped())
    rendered = _run([bin_ / "od-configs", "render", CPU, "--records", "records"], cwd=tmp_path, env=env).stdout
    assert "records/train-*-of-*.tfrecord" in rendered
    assert f"num_classes: {report['num_classes'] + 1}" in rendered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "lm.pbtxt", "records"]

