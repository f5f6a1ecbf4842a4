"""Which runtimes can load a bundle's graphs: ONNX IR version and opsets against the oldest
supported onnxruntime and TensorRT ONNX parser.

Limits from the runtimes' own support matrices: onnxruntime 1.19 reads IR ≤ 10 and the default
(ai.onnx) domain up to opset 21, 1.20 up to 22; TensorRT 10.0–10.8's ONNX parser (JetPack 6
ships 10.3) takes opsets 9–20, 10.9 up to 22. Exported bundles are IR 10, opset 18 today; a
graph that needs more says so in the manifest (``runtime_requirements``).
"""

from __future__ import annotations

from pathlib import Path

#: (oldest version, max IR, max ai.onnx opset), oldest first
ONNXRUNTIME = (("1.19", 10, 21), ("1.20", 10, 22), ("1.22", 11, 23))
TENSORRT = (("10.3", 10, 20), ("10.9", 10, 22), ("10.13", 11, 24))
#: what accm promises: the oldest runtimes users have (JetPack 6's TensorRT, onnxruntime 1.19)
OLDEST = {"onnxruntime": "1.19", "tensorrt": "10.3"}


def graph_versions(path: Path) -> tuple[int, dict[str, int]]:
    """(IR version, {domain: opset}) of an ONNX file, without loading its external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.ir_version, {(op.domain or "ai.onnx"): op.version for op in model.opset_import}


def _oldest(table, ir: int, opset: int) -> str | None:
    return next((version for version, max_ir, max_opset in table if ir <= max_ir and opset <= max_opset), None)


def requirements(root: Path, files: list[str]) -> dict:
    """What a bundle's graphs need: the highest IR and ai.onnx opset, the other domains they use,
    and the oldest onnxruntime and TensorRT that read them (None: none known does)."""
    ir, opset, domains = 0, 0, set()
    for name in files:
        graph_ir, opsets = graph_versions(Path(root) / name)
        ir = max(ir, graph_ir)
        opset = max(opset, opsets.get("ai.onnx", 0))
        domains |= set(opsets) - {"ai.onnx"}
    return {"onnx_ir_version": ir, "opset": opset, "other_domains": sorted(domains),
            "onnxruntime": _oldest(ONNXRUNTIME, ir, opset), "tensorrt": _oldest(TENSORRT, ir, opset)}
