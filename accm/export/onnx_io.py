"""Exporting one stage to ONNX (torch.onnx dynamo exporter) and sharing weights between graphs."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

OPSET = 18


def export_module(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                  output_names: list[str], dynamic_shapes) -> Path:
    """Export with the dynamo exporter, weights as external data next to the graph."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, opset_version=OPSET, verbose=False,
        )
    program.save(str(path), external_data=True)
    del program
    strip_debug_metadata(path)
    return path


def strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, FX names): most of the graph
    file's size, and nothing a runtime reads. Weights (external data) are not touched."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def _external_info(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _external_initializers(model):
    """(initializer, its external-data fields) for each initializer stored outside the graph."""
    import onnx

    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            yield init, _external_info(init)


def _point(tensor, location: str, offset: int, length: int) -> None:
    """Re-point an external initializer (no raw data is loaded or copied)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def share_weights(primary: Path, secondary: Path) -> int:
    """Point ``secondary``'s external initializers at identical ones in ``primary``'s data file.

    Prefill and decode carry the same decoder weights; after this the bundle stores them once.
    Returns the bytes saved. Tensors are matched by dtype, shape and content hash; those the
    streamed export already pointed into ``primary``'s file are left as they are, and only
    ``primary``'s tensors of a dtype and shape still looked for are hashed.
    """
    import onnx

    def digest(model_path: Path, info: dict) -> str:
        with open(model_path.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return hashlib.sha256(f.read(int(info["length"]))).hexdigest()

    primary_model = onnx.load(str(primary), load_external_data=False)
    primary_data = {info["location"] for _, info in _external_initializers(primary_model)}
    model = onnx.load(str(secondary), load_external_data=False)
    own = [(init, info) for init, info in _external_initializers(model) if info["location"] not in primary_data]
    wanted = {(init.data_type, tuple(init.dims)) for init, _ in own}
    by_key = {(i.data_type, tuple(i.dims), digest(primary, info)): info
              for i, info in _external_initializers(primary_model) if (i.data_type, tuple(i.dims)) in wanted}
    own_data = secondary.parent / (secondary.name + ".data")
    kept_bytes = []
    saved = 0
    for init, info in own:
        match = by_key.get((init.data_type, tuple(init.dims), digest(secondary, info)))
        if match is not None:
            _point(init, match["location"], int(match.get("offset", 0)), int(match["length"]))
            saved += int(match["length"])
        else:
            with open(secondary.parent / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                kept_bytes.append((init, f.read(int(info["length"]))))
    tmp = own_data.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for init, data in kept_bytes:
            offset = f.tell()
            pad = (-offset) % 64
            f.write(b"\0" * pad)
            _point(init, own_data.name, offset + pad, len(data))
            f.write(data)
    os.replace(tmp, own_data)
    onnx.save(model, str(secondary))
    return saved


def shared_weight_table(root: Path, stages: list[str]) -> list[dict]:
    """External tensors that several stage graphs read from the same bytes of one data file.

    The runtime maps each once and hands it to every session that uses it (its name differs per
    graph), so a bundle's shared weights are held in memory once. Tensors numpy cannot view
    (e.g. bfloat16) are left out; their sessions load them as usual.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    by_bytes: dict[tuple, dict] = {}
    for stage in stages:
        model = onnx.load(str(Path(root) / f"{stage}.onnx"), load_external_data=False)
        for init, info in _external_initializers(model):
            key = (info["location"], int(info.get("offset", 0)), int(info["length"]))
            try:
                dtype = tensor_dtype_to_np_dtype(init.data_type).name
            except (KeyError, TypeError):
                continue
            entry = by_bytes.setdefault(key, {"file": key[0], "offset": key[1], "length": key[2], "dtype": dtype,
                                               "shape": list(init.dims), "names": {}})
            entry["names"][stage] = init.name
    return [e for e in by_bytes.values() if len(e["names"]) > 1 and e["dtype"] != "object"]
