"""Precision conversions of one stage graph, each returning what it changed (for the manifest).

- fp16 (ACCM's caption model and selector; the core stages are traced in fp16 instead):
  onnxruntime's own float16 converter, I/O kept fp32, with ops that measurement showed need
  fp32 left in fp32 (``FP16_BLOCK``).
- int8 (TensorRT-shaped), for ACCM's small modules: explicit Q/DQ from onnxruntime's
  ``quantize_static``: symmetric per-channel int8 weights and symmetric per-tensor int8
  activations, calibrated on recorded pipeline inputs, on weight MatMul/Gemm nodes only, so
  masks, softmax, norms and residual adds stay in float (a float-min attention mask would
  otherwise get an infinite scale). The core stages get the same weights streamed
  (``precision.streamed``), calibrated layer by layer (``precision.calibrate``).
- int8-cpu: onnxruntime's ``quantize_dynamic`` (int8 weights, activations quantized at run
  time) for its fast CPU kernels; TensorRT's parser rejects these graphs.
- int4-cpu: the language model's weight MatMuls become onnxruntime's ``MatMulNBits`` (4-bit
  weights in blocks along the input dimension, one fp32 scale per block, symmetric; activations
  stay fp32); the other stages are int8-cpu. TensorRT's parser rejects these graphs too.

int8's, int4's, int8-cpu's and int4-cpu's language-model stages (and int8's vision stage) are
quantized while the exporter streams their weights (``precision.streamed``), with the same weight
rules; this module converts whole (small) graphs: embedding stages, int8-cpu's vision stage and
ACCM's modules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

#: ops kept in fp32 in fp16 graphs: the selection path (TopK over float scores: fp16 would
#: merge near-equal scores into ties) and RMSNorm's variance (x² overflows fp16 for the
#: large activations LLaMA models produce)
FP16_BLOCK = ["TopK", "Pow", "ReduceMean", "Sqrt", "Reciprocal"]
QDQ_OPS = ("MatMul", "Gemm")


def _save(model: onnx.ModelProto, path: Path) -> None:
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
              size_threshold=1024)


def _dedupe_casts(model: onnx.ModelProto) -> None:
    """onnxruntime's converter emits the same Cast (same node name, same output) once per
    consumer when a tensor feeds several blocked nodes; keep one of each identical pair and make
    any remaining node names unique, so the graph loads."""
    producers: dict[str, onnx.NodeProto] = {}
    keep = []
    for node in model.graph.node:
        first = producers.get(node.output[0]) if node.output else None
        if first is not None:
            if node.op_type == first.op_type == "Cast" and list(node.input) == list(first.input) \
                    and node.attribute == first.attribute:
                continue
            raise ValueError(f"float16 conversion produced two different writers of {node.output[0]}")
        for out in node.output:
            producers[out] = node
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    seen: Counter = Counter()
    for node in model.graph.node:
        if node.name:
            seen[node.name] += 1
            if seen[node.name] > 1:
                node.name = f"{node.name}_{seen[node.name] - 1}"


def _drop_fp16_round_trips(model: onnx.ModelProto, fp32_nodes: set[str]) -> None:
    """The converter wraps every blocked node in casts, so a chain of blocked nodes passes each
    intermediate through fp16 and back (cos(fp16(angle)), fp16(x²) in RMSNorm). Feed the fp32
    tensor straight on wherever a blocked node's output is cast to fp16 only to be cast back."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node, dtype) -> bool:
        return node is not None and node.op_type == "Cast" and node.attribute[0].i == dtype

    rename, dropped = {}, set()
    for node in graph.node:
        inner = producer.get(node.input[0]) if node.input else None
        if cast_to(node, onnx.TensorProto.FLOAT) and cast_to(inner, onnx.TensorProto.FLOAT16) \
                and getattr(producer.get(inner.input[0]), "name", None) in fp32_nodes \
                and node.output[0] not in outputs:
            rename[node.output[0]] = inner.input[0]
            dropped.add(id(node))
    keep = [n for n in graph.node if id(n) not in dropped]
    for node in keep:
        node.input[:] = [rename.get(i, i) for i in node.input]
    used = {i for n in keep for i in n.input} | outputs
    keep = [n for n in keep if not (n.op_type == "Cast" and not any(o in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(keep)


def to_fp16(src: Path, dst: Path) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    kept_nodes = rotary_angle_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCK,
                                         node_block_list=kept_nodes)
    _dedupe_casts(converted)
    _drop_fp16_round_trips(converted, set(kept_nodes) | {n.name for n in converted.graph.node
                                                         if n.op_type in FP16_BLOCK})
    _save(converted, dst)
    status = ort_session_status(dst)
    if status != 0:
        # measured: onnxruntime 1.31's full graph optimisation segfaults on the fp16 ACCM mapper
        import onnxruntime

        _copy(src, dst, "")
        return {"method": "kept fp32", "reason": f"onnxruntime {onnxruntime.__version__} could not open the "
                f"fp16 graph (session creation exited with {status})"}
    kept = sorted({n.op_type for n in converted.graph.node if n.op_type in FP16_BLOCK})
    return {"method": "onnxruntime float16 converter", "io": "fp32", "ops_kept_fp32": kept}


def rotary_angle_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing rotary angles (position × inverse frequency, then Cos/Sin).

    Kept fp32: fp16 spacing at position 512 is 0.5 rad, which made cos/sin off by up to 0.17 and
    broke answers. Walks back from each Cos/Sin and stops at Cast/Shape/Size (where the integer
    position ids and shapes enter), so nothing of the decoder itself is included."""
    producer = {out: node for node in model.graph.node for out in node.output}
    blocked: dict[str, onnx.NodeProto] = {}
    stack = [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    while stack:
        node = stack.pop()
        if node.name in blocked:
            continue
        blocked[node.name] = node
        if node.op_type in ("Cast", "Shape", "Size"):
            continue
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(blocked)


def ort_session_status(path: Path) -> int:
    """Exit status of opening ``path`` in ONNX Runtime (CPU, default optimisation) in a child
    process, so that a crash inside onnxruntime cannot take the exporter down with it."""
    code = "import sys, onnxruntime as o; o.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True).returncode


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul/Gemm nodes with an initializer (weight) input."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QDQ_OPS and any(i in inits for i in n.input)]


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # onnxruntime's reader protocol
        pass


def to_int8_qdq(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src), load_external_data=False)
    nodes = weight_matmuls(model)
    if not nodes or not feeds:
        if nodes:
            return _copy(src, dst, "fp32 (no calibration data)")
        return _copy(src, dst, "fp16 storage (no weight MatMul to quantize)", half_store=True)
    with tempfile.TemporaryDirectory() as scratch:
        quantize_static(
            str(_without_value_info(src, Path(scratch))), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            nodes_to_quantize=nodes, use_external_data_format=True, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    _repack(dst)
    return {"method": "explicit Q/DQ (quantize_static)", "weights": "int8 symmetric per-channel",
            "activations": "int8 symmetric per-tensor, MinMax on recorded pipeline inputs",
            "calibration_batches": len(feeds), "quantized_nodes": nodes, "other_weights": HALF_STORE_NOTE}


def to_int8_dynamic(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    nodes = weight_matmuls(model)
    if not nodes:
        return _copy(src, dst, "fp16 storage (no weight MatMul to quantize)", half_store=True)
    with tempfile.TemporaryDirectory() as scratch:
        quantize_dynamic(str(_without_value_info(src, Path(scratch))), str(dst), weight_type=QuantType.QInt8,
                         nodes_to_quantize=nodes, op_types_to_quantize=list(QDQ_OPS), use_external_data_format=True)
    _repack(dst)
    return int8_dynamic_detail(nodes)


def int8_qdq_streamed_detail(nodes: list[str], skipped: list[str]) -> dict:
    return {"method": "explicit Q/DQ, weights streamed", "weights": "int8 symmetric per-channel",
            "activations": "int8 symmetric per-tensor: max |x| / 127 of each weight MatMul's input over the "
            "calibration samples, recorded in PyTorch with the decoder layers streamed",
            "quantized_nodes": nodes, "left_float": skipped, "other_weights": HALF_STORE_NOTE}


def int8_dynamic_detail(nodes: list[str]) -> dict:
    return {"method": "dynamic int8 (quantize_dynamic)", "weights": "int8 symmetric per-tensor",
            "activations": "quantized at run time", "quantized_nodes": nodes, "other_weights": HALF_STORE_NOTE}


def int4_qdq_detail(block_size: int, nodes: list[str]) -> dict:
    return {"method": "int4 weight-only (blocked Q/DQ)", "weights": f"INT4 symmetric, blocks of {block_size} "
            "along the input dimension (halved where it does not divide it: TensorRT takes whole blocks), one "
            "fp16 scale per block (DequantizeLinear, opset 21)",
            "activations": "fp16", "quantized_nodes": nodes}


def int4_detail(block_size: int, nodes: list[str]) -> dict:
    return {"method": "int4 weight-only (MatMulNBits)", "weights": f"int4 symmetric, blocks of {block_size} "
            "along the input dimension, one fp32 scale per block", "activations": "fp32",
            "quantized_nodes": nodes, "other_weights": HALF_STORE_NOTE}


#: weights per fp32 scale: 4 + 32/64 bits a weight keeps a 7B's LLM weights at 28 % of fp16 (block 32
#: would be 31 %); on accm-tiny *val* (n = 500) blocks of 32, 64 and 128 all answered within 0.4
#: points of fp32, so the smallest block under 30 % is used (with the lm_head also at 4 bits: +0.4)
INT4_BLOCK = 64


def _without_value_info(src: Path, scratch: Path) -> Path:
    """A copy without the exporter's intermediate shape annotations: onnx's shape inference (run
    by the quantizer) re-derives them and refuses the graph where the two disagree."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    out = scratch / f".{src.stem}.noinfo.onnx"
    _save(model, out)
    return out


HALF_STORE_NOTE = "fp32 tensors of 64 KiB or more stored as fp16, cast back to fp32 in the graph"


def _store_large_fp32_weights_as_fp16(model: onnx.ModelProto, min_bytes: int = 64 * 1024) -> None:
    """INT8 bundles: the weights the quantizer leaves in fp32 (token and position embeddings,
    the patch convolution) are stored as fp16 behind a Cast, halving them on disk while every
    op still computes in fp32. For a 7B that is the 0.5 GB embedding table."""
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) * 4 < min_bytes:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        keep.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=init.name + "_to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _copy(src: Path, dst: Path, method: str, half_store: bool = False) -> dict:
    model = onnx.load(str(src))
    if half_store:
        _store_large_fp32_weights_as_fp16(model)
    _save(model, dst)
    return {"method": method}


def _repack(path: Path) -> None:
    """Rewrite with one external data file named after the graph (the quantizer picks its own),
    large unquantized weights stored as fp16."""
    model = onnx.load(str(path))
    _store_large_fp32_weights_as_fp16(model)
    stale = {e.value for init in model.graph.initializer for e in init.external_data if e.key == "location"}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staging = Path(tmp) / path.name
        _save(model, staging)
        for name in stale:
            if (path.parent / name).exists():
                (path.parent / name).unlink()
        os.replace(staging, path)
        os.replace(Path(tmp) / (path.name + ".data"), path.parent / (path.name + ".data"))
