"""Replacing ``AccmTokenTopK`` plugin nodes by their standard-op form (exported from the same
PyTorch function the ORT target uses), so a ``--target trt`` graph runs in ONNX Runtime.

Used to prove that the plugin graphs compute what the reference computes, wherever TensorRT
is absent; it is not a runtime path.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from ..bundle import names
from .onnx_io import export_module
from .token_topk import StandardTokenTopK

OUTPUTS = list(names.PLUGIN_OUTPUTS)


@functools.lru_cache(maxsize=16)
def _standard_graph(k: int, emit_discarded: bool) -> onnx.ModelProto:
    module = StandardTokenTopK(k, emit_discarded)
    outs = OUTPUTS if emit_discarded else OUTPUTS[:2]
    n = k + 9
    with tempfile.TemporaryDirectory() as tmp:
        b, length = Dim("b"), Dim("n", min=k + 1)
        path = export_module(module, (torch.rand(2, n), torch.rand(2, n, 5)), Path(tmp) / "topk.onnx",
                             ["scores", "tokens"], outs, ({0: b, 1: length}, {0: b, 1: length, 2: Dim("d")}))
        return onnx.load(str(path))


def _renamed(rename: dict, prefix: str, tensor: str) -> str:
    return tensor if not tensor else rename.get(tensor, prefix + tensor)


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


def replace_plugin_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every AccmTokenTopK node inlined as standard ops."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes, inits, replaced = [], [], 0
    for node in model.graph.node:
        if not (node.domain == names.PLUGIN_DOMAIN and node.op_type == names.PLUGIN_NAME):
            nodes.append(node)
            continue
        sub = _standard_graph(_attr(node, "k"), bool(_attr(node, "emit_discarded")))
        prefix = f"accm_topk_{replaced}/"
        rename = {i.name: outer for i, outer in zip(sub.graph.input, node.input)}
        rename.update({o.name: outer for o, outer in zip(sub.graph.output, node.output)})
        name = functools.partial(_renamed, rename, prefix)
        for init in sub.graph.initializer:
            copy = onnx.TensorProto.FromString(init.SerializeToString())
            copy.name = name(init.name)
            inits.append(copy)
        for sn in sub.graph.node:
            copy = onnx.NodeProto.FromString(sn.SerializeToString())
            copy.name = prefix + sn.name
            copy.input[:] = [name(t) for t in sn.input]
            copy.output[:] = [name(t) for t in sn.output]
            nodes.append(copy)
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    keep = [o for o in model.opset_import if o.domain != names.PLUGIN_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model, replaced


def standard_bundle(src: Path, dst: Path) -> Path:
    """A copy of a ``--target trt`` bundle with every plugin node inlined as standard ops."""
    import json
    import shutil

    from ..bundle.manifest import write_manifest

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for stage, info in manifest["stages"].items():
        graph = onnx.load(str(dst / info["file"]))
        replaced, count = replace_plugin_nodes(graph)
        if count:  # a new data file: other graphs may share the original one
            onnx.save(replaced, str(dst / info["file"]), save_as_external_data=True, location=f"{stage}.std.data")
    for key in ("files", "bundle_digest", "format", "format_version"):
        manifest.pop(key, None)
    manifest["target"] = "ort"
    if "shared_weights" in manifest:  # re-saved graphs read new files
        from .onnx_io import shared_weight_table

        manifest["shared_weights"] = shared_weight_table(dst, list(names.SHARED_WEIGHT_STAGES))
    write_manifest(dst, manifest)
    return dst
