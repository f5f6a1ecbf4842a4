"""The external-data file names an ONNX graph refers to, read without the onnx package.

The runtime install has no ``onnx``, and a bundle from elsewhere must not make ONNX Runtime read a
file outside it (``location: ../../secret``), so this walks the protobuf wire format of the
ModelProto just far enough: graph → initializers, and node attributes' tensors and subgraphs →
each TensorProto's ``external_data`` entries whose key is ``location``. Field numbers are from
onnx.proto (ModelProto.graph 7; GraphProto.node 1, initializer 5; NodeProto.attribute 5;
AttributeProto.t 5, g 6, tensors 10, graphs 11; ModelProto.functions 25, FunctionProto.node 7;
TensorProto.external_data 13;
StringStringEntryProto.key 1, value 2).
"""

from __future__ import annotations

from pathlib import Path


class MalformedGraph(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise MalformedGraph("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) for each field; length-delimited values are bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise MalformedGraph("truncated field")
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
        yield field, wire, value


def _tensor_locations(buf: bytes, out: list[str]) -> None:
    for field, wire, value in _fields(buf):
        if field == 13 and wire == 2:  # external_data entry
            entry = {f: v for f, w, v in _fields(value) if w == 2}
            if entry.get(1) == b"location":
                out.append(entry.get(2, b"").decode("utf-8", errors="replace"))


def _node_locations(buf: bytes, out: list[str], depth: int) -> None:
    for field, wire, attribute in _fields(buf):
        if field == 5 and wire == 2:
            for af, aw, v in _fields(attribute):
                if aw == 2 and af in (5, 10):
                    _tensor_locations(v, out)
                elif aw == 2 and af in (6, 11):
                    _graph_locations(v, out, depth + 1)


def _graph_locations(buf: bytes, out: list[str], depth: int) -> None:
    if depth > 32:
        raise MalformedGraph("subgraphs nested too deeply")
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == 5:  # initializer
            _tensor_locations(value, out)
        elif field == 1:  # node
            _node_locations(value, out, depth)


def external_data_locations(path: str | Path) -> set[str]:
    """Every external-data ``location`` in an ONNX file's graph and functions (raises
    MalformedGraph for bytes that are not a protobuf message)."""
    out: list[str] = []
    for field, wire, value in _fields(Path(path).read_bytes()):
        if field == 7 and wire == 2:  # ModelProto.graph
            _graph_locations(value, out, 0)
        elif field == 25 and wire == 2:  # ModelProto.functions: FunctionProto.node is field 7
            for ff, fw, node in _fields(value):
                if ff == 7 and fw == 2:
                    _node_locations(node, out, 0)
    return set(out)
