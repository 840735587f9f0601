"""Label map: OD API text format in and out, and the rejections users hit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from od.io.label_map import (
    LabelMap,
    LabelMapError,
    format_label_map,
    parse_label_map,
    read_label_map,
    write_label_map,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON_MAP = SHARED / "datasets" / "raccoon" / "label_map.pbtxt"

REAL_WORLD = """\
# Label map as people write it by hand
item {
  id: 1
  name: 'raccoon'   # single quotes
  display_name: "Raccoon"
}

item: {
  name: "cat"
  id: 2
  keypoints { id: 0 label: 'nose' }
  frequency: FREQUENT
}
item < name: 'dog' id: 4 >
"""


def test_reads_single_quotes_comments_display_name(tmp_path: Path) -> None:
    p = tmp_path / "lm.pbtxt"
    p.write_text(REAL_WORLD)
    lm = read_label_map(p)
    assert lm.items == ((1, "raccoon"), (2, "cat"), (4, "dog"))
    assert lm.names == ["raccoon", "cat", "dog"]
    assert lm.name_to_id == {"raccoon": 1, "cat": 2, "dog": 4}
    assert lm.id_to_name[4] == "dog"
    assert lm.num_classes == 4  # max id, gaps allowed
    assert len(lm) == 3 and "cat" in lm and "horse" not in lm
    assert lm.display_name(1) == "Raccoon" and lm.display_name(2) == "cat"


def test_round_trip(tmp_path: Path) -> None:
    lm = LabelMap.from_names(["triangle", "circle", "square", "circle", "naïve 'q\""])
    assert lm.names == ["circle", "naïve 'q\"", "square", "triangle"]
    assert lm.ids == [1, 2, 3, 4]
    p = tmp_path / "sub" / "label_map.pbtxt"
    write_label_map(p, lm)
    assert read_label_map(p) == lm
    assert [f.name for f in p.parent.iterdir()] == ["label_map.pbtxt"]  # no temp left behind
    text = p.read_text()
    assert text.startswith("item {") and "id: 1" in text


def test_round_trip_keeps_display_names(tmp_path: Path) -> None:
    lm = parse_label_map(REAL_WORLD)
    again = parse_label_map(format_label_map(lm))
    assert again == lm and again.display_names == lm.display_names


def test_with_added_keeps_ids_and_sorts_new() -> None:
    lm = parse_label_map("item { id: 7 name: 'b' } item { id: 2 name: 'z' }")
    grown = lm.with_added(["y", "b", "a"])
    assert grown.items == ((2, "z"), (7, "b"), (8, "a"), (9, "y"))
    assert LabelMap.from_names([]).with_added(["x"]).items == ((1, "x"),)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("item {\n  id: 1\n  name: 'a'\n}\nitem {\n  id: 0\n  name: 'b'\n}\n", 6, "background"),
        ("item {\n  name: 'a'\n  id: -3\n}\n", 3, "negative"),
        ("item { id: 1 name: 'a' }\n# c\nitem {\n  name: 'b'\n  id: 1\n}\n", 5, "line 1"),
        ("item { id: 1 name: 'a' }\nitem {\n  id: 2\n  name: 'a'\n}\n", 4, "already used"),
        ("item { id: 1 name: 'a' }\n\nitem {\n  id: 2\n}\n", 3, "no name"),
        ("item { name: 'a' }\n", 1, "no id"),
        ("item {\n  id: 1\n  nam: 'a'\n}\n", 3, "nam"),
        ("item {\n  id: 1\n  name: 'a'\n", 3, "valid"),
    ],
)
def test_rejections_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = tmp_path / "bad.pbtxt"
    p.write_text(text)
    with pytest.raises(LabelMapError) as ei:
        read_label_map(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert words in msg


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LabelMapError, match="cannot read"):
        read_label_map(tmp_path / "missing.pbtxt")
    p = tmp_path / "bin.pbtxt"
    p.write_bytes(b"item { id: 1\n name: '\xff\xfe' }")
    with pytest.raises(LabelMapError, match=r"bin.pbtxt:2: .*UTF-8"):
        read_label_map(p)


def test_labelmap_validates_itself() -> None:
    with pytest.raises(LabelMapError):
        LabelMap(((0, "a"),))
    with pytest.raises(LabelMapError):
        LabelMap(((1, "a"), (2, "a")))
    assert LabelMap(((3, "c"), (1, "a"))).items == ((1, "a"), (3, "c"))


def test_no_tensorflow_import() -> None:
    code = "import sys, od.io.label_map as m; m.parse_label_map(\"item {id: 1 name: 'x'}\"); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_real_raccoon_label_map() -> None:
    if not RACCOON_MAP.exists():
        pytest.skip(f"{RACCOON_MAP} not present")
    lm = read_label_map(RACCOON_MAP)
    assert lm.items == ((1, "raccoon"),)
