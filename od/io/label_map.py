"""Read, validate and write OD API ``StringIntLabelMap`` files (``label_map.pbtxt``).

The message classes are built at runtime from a hand-written descriptor that
mirrors ``object_detection/protos/string_int_label_map.proto`` (same field
numbers, including the newer ``keypoints``/``ancestor_ids``/``frequency``
fields), so users need neither ``protoc`` nor the Object Detection API, and
files written by those tools parse unchanged. Parsing and printing go through
protobuf's ``text_format``; our own small scanner only recovers line numbers
for error messages, because ``text_format`` does not report them per item.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from od.io.files import atomic_write_text

_PROTO_FILE = "od/string_int_label_map.proto"  # private name: never clashes with a real pb2 module
_PACKAGE = "object_detection.protos"


MAX_ID = 2**31 - 1  # ids are int32 in the proto, in records and in Model Garden


class LabelMapError(ValueError):
    """A label map that cannot be used; the message names the file and line."""


@functools.lru_cache(maxsize=None)
def _message_classes():
    """(StringIntLabelMap, StringIntLabelMapItem) built from a runtime descriptor, in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name=_PROTO_FILE, package=_PACKAGE, syntax="proto2")

    freq = fdp.enum_type.add(name="LVISFrequency")
    for i, n in enumerate(("UNSPECIFIED", "FREQUENT", "COMMON", "RARE")):
        freq.value.add(name=n, number=i)

    item = fdp.message_type.add(name="StringIntLabelMapItem")
    kp = item.nested_type.add(name="KeypointMap")
    kp.field.add(name="id", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    kp.field.add(name="label", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="id", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    item.field.add(name="display_name", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(
        name="keypoints", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
        type_name=f".{_PACKAGE}.StringIntLabelMapItem.KeypointMap",
    )
    item.field.add(name="ancestor_ids", number=5, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(name="descendant_ids", number=6, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(
        name="frequency", number=7, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
        type_name=f".{_PACKAGE}.LVISFrequency",
    )
    item.field.add(name="instance_count", number=8, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)

    top = fdp.message_type.add(name="StringIntLabelMap")
    top.field.add(
        name="item", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
        type_name=f".{_PACKAGE}.StringIntLabelMapItem",
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.22
        factory = message_factory.MessageFactory(pool)
        get = factory.GetPrototype
    return (
        get(pool.FindMessageTypeByName(f"{_PACKAGE}.StringIntLabelMap")),
        get(pool.FindMessageTypeByName(f"{_PACKAGE}.StringIntLabelMapItem")),
    )


@dataclass(frozen=True)
class LabelMap:
    """Class ids and names; id 0 is the background and never appears here.

    ``display_names`` keeps the optional human-readable names of a file we read,
    so rewriting a user's map (``--add-classes``) does not lose them.
    """

    items: tuple[tuple[int, str], ...]
    display_names: tuple[tuple[int, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        items = tuple(sorted((int(i), str(n)) for i, n in self.items))
        seen_ids: set[int] = set()
        seen_names: set[str] = set()
        for i, n in items:
            if i < 1:
                raise LabelMapError(f"label map: id {i} for {n!r} must be >= 1 (0 is the background)")
            if i > MAX_ID:
                raise LabelMapError(f"label map: id {i} for {n!r} is above {MAX_ID}, the largest id the "
                                    "format holds (int32)")
            if not n:
                raise LabelMapError(f"label map: id {i} has an empty name")
            if i in seen_ids:
                raise LabelMapError(f"label map: id {i} is used twice")
            if n in seen_names:
                raise LabelMapError(f"label map: name {n!r} is used twice")
            seen_ids.add(i)
            seen_names.add(n)
        object.__setattr__(self, "items", items)
        object.__setattr__(
            self, "display_names", tuple(sorted((int(i), str(d)) for i, d in self.display_names if d))
        )

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelMap":
        """A new map: unique names sorted, ids 1..n (stable, whatever order the data came in)."""
        return cls(tuple((i, n) for i, n in enumerate(sorted(set(names)), start=1)))

    def with_added(self, names: Iterable[str]) -> "LabelMap":
        """Keep every existing id; new names (sorted) get ids after the current max."""
        new = sorted(set(names) - set(self.names))
        start = self.num_classes + 1
        added = tuple((start + k, n) for k, n in enumerate(new))
        return LabelMap(self.items + added, self.display_names)

    @functools.cached_property
    def name_to_id(self) -> dict[str, int]:
        return {n: i for i, n in self.items}

    @functools.cached_property
    def id_to_name(self) -> dict[int, str]:
        return dict(self.items)

    @property
    def names(self) -> list[str]:
        return [n for _, n in self.items]

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.items]

    @property
    def num_classes(self) -> int:
        """Highest id (what a model's class count must cover; ids may have gaps)."""
        return max((i for i, _ in self.items), default=0)

    def display_name(self, class_id: int) -> str:
        """``display_name`` when the file had one, else the name."""
        return dict(self.display_names).get(class_id) or self.id_to_name[class_id]

    def __contains__(self, name: object) -> bool:
        return name in self.name_to_id

    def __len__(self) -> int:
        return len(self.items)


# --- line numbers ----------------------------------------------------------

def _item_lines(text: str) -> list[dict[str, int]]:
    """For each top-level ``item`` block in order: line of ``item``, ``id`` and ``name`` (1-based).

    A deliberately small scanner (comments, quoted strings with escapes, ``{}``/``<>``
    nesting); ``text_format`` has already accepted the text, so it only needs to count.
    """
    out: list[dict[str, int]] = []
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "'\"":
            q = c
            i += 1
            while i < n and text[i] != q:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
        elif c in "{<":
            depth += 1
            i += 1
        elif c in "}>":
            depth -= 1
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if depth == 0 and word == "item":
                out.append({"item": line})
            elif depth == 1 and out and word in ("id", "name") and word not in out[-1]:
                out[-1][word] = line
            i = j
        else:
            i += 1
    return out


def parse_label_map(text: str, source: str = "<string>") -> LabelMap:
    """Parse pbtxt text; every problem raises LabelMapError naming ``source`` and the line."""
    from google.protobuf import text_format

    msg_cls, _ = _message_classes()
    msg = msg_cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        # protobuf says "line:col : message"; re-word it as "file:line: ..." like a compiler.
        detail = re.sub(r"^\d+:\d+ : ", "", str(e))
        col = f" (column {e.GetColumn()})" if e.GetColumn() else ""
        raise LabelMapError(
            f"{source}:{e.GetLine() or '?'}: not a valid StringIntLabelMap{col}: {detail}"
        ) from None

    lines = _item_lines(text)
    if len(lines) != len(msg.item):  # should not happen; fall back to item numbers
        lines = [{} for _ in msg.item]

    items: list[tuple[int, str]] = []
    displays: list[tuple[int, str]] = []
    id_seen: dict[int, int] = {}
    name_seen: dict[str, int] = {}
    for k, (it, ln) in enumerate(zip(msg.item, lines), start=1):
        where_item = f"{source}:{ln.get('item', '?')}"
        where_id = f"{source}:{ln.get('id', ln.get('item', '?'))}"
        where_name = f"{source}:{ln.get('name', ln.get('item', '?'))}"
        if not it.HasField("name") or not it.name.strip():
            raise LabelMapError(f"{where_item}: item #{k} has no name")
        if not it.HasField("id"):
            raise LabelMapError(f"{where_item}: item #{k} ({it.name!r}) has no id")
        if it.id == 0:
            raise LabelMapError(
                f"{where_id}: item {it.name!r} has id 0, which is reserved for the background; "
                "class ids start at 1"
            )
        if it.id < 0:
            raise LabelMapError(f"{where_id}: item {it.name!r} has negative id {it.id}; class ids start at 1")
        if it.id in id_seen:
            raise LabelMapError(
                f"{where_id}: id {it.id} ({it.name!r}) is already used on line {id_seen[it.id]}"
            )
        if it.name in name_seen:
            raise LabelMapError(
                f"{where_name}: name {it.name!r} is already used on line {name_seen[it.name]}"
            )
        id_seen[it.id] = ln.get("id", ln.get("item", 0))
        name_seen[it.name] = ln.get("name", ln.get("item", 0))
        items.append((it.id, it.name))
        if it.HasField("display_name") and it.display_name:
            displays.append((it.id, it.display_name))
    return LabelMap(tuple(items), tuple(displays))


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """Read ``label_map.pbtxt``; LabelMapError (naming file and line) for anything unusable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LabelMapError(f"{path}: cannot read label map: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LabelMapError(f"{path}:{line}: label map is not UTF-8 text") from None
    return parse_label_map(text, str(path))


def format_label_map(label_map: LabelMap) -> str:
    """pbtxt text in id order, via ``text_format`` (the OD API reads it unchanged)."""
    from google.protobuf import text_format

    msg_cls, _ = _message_classes()
    msg = msg_cls()
    displays = dict(label_map.display_names)
    for i, n in label_map.items:
        it = msg.item.add()
        it.name = n
        it.id = i
        if i in displays:
            it.display_name = displays[i]
    return text_format.MessageToString(msg, as_utf8=True)


def write_label_map(path: str | os.PathLike, label_map: LabelMap) -> None:
    """Atomic write (temp file + rename): a crash never leaves half a label map."""
    atomic_write_text(path, format_label_map(label_map))



def append_items(original: bytes, items: Iterable[tuple[int, str]]) -> bytes:
    """The user's label map file with ``items`` appended: edited, not rewritten.

    Comments, field order and fields od does not use (``keypoints``, ``ancestor_ids``,
    ``frequency`` ...) stay exactly as they were; only new ``item`` blocks are added.
    """
    added = format_label_map(LabelMap(tuple(items))).encode("utf-8")
    sep = b"" if not original or original.endswith(b"\n") else b"\n"
    return original + sep + added
