"""Weight quantization one tensor at a time, for graphs whose weights are still lazy (``export.streamed``).

onnxruntime's quantizers load the whole fp32 graph (27 GB for a 7B) before they quantize. Here
each weight MatMul of an ``onnx_ir`` graph is rewritten in place and its quantized tensors are
``LazyTensor``s computed from the one weight they need while the graph is being written:

- ``int4``: ``MatMulNBits`` with blocks packed by onnxruntime's own kernel
  (``quantize_matmul_4bits``, the one ``MatMulNBitsQuantizer`` calls), 4-bit symmetric.
- ``int4`` in the TensorRT form: ``MatMul(x, DequantizeLinear(W4, scales))`` with a blocked
  (``block_size``, opset 21) symmetric INT4 weight packed by onnxruntime's
  ``quantize_qdq_matmul_4bits`` (what ``MatMulNBitsQuantizer`` uses for its QDQ format); the
  scales take the activations' dtype (fp16), so TensorRT sees weight-only INT4 on fp16 math.
- ``int8`` (TensorRT's explicit Q/DQ): ``MatMul(DQ(Q(x)), DQ(W8))`` as ``quantize_static`` writes
  it: int8 symmetric per-channel weights (max |W| / 127 per output column), int8 symmetric
  per-tensor activations whose scale comes from a calibration's recorded max |x|
  (``precision.calibrate``); one Q/DQ pair per activation tensor, one DQ per weight.
- ``int8-dynamic``: ``quantize_dynamic``'s node pattern (``DynamicQuantizeLinear`` per input,
  ``MatMulInteger``, a cast and the product of the two scales) with its weight rule: int8
  symmetric per tensor, scale max|W| / 127, round half to even.

Weight MatMuls are ``MatMul(x, W)``, ``MatMul(x, Transpose(W))`` (the exporter's Linear before
folding) and ``Gemm(x, W, transB=1)`` without bias (the lm_head over the last position).
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: DequantizeLinear takes INT4 and ``block_size`` from ai.onnx opset 21
INT4_QDQ_OPSET = 21


@dataclasses.dataclass
class WeightSite:
    node: object  # ir.Node: the MatMul or Gemm
    weight: object  # ir.Value: the 2-D initializer
    transposed: bool  # the initializer is [N, K] (Linear layout); MatMul takes [K, N]
    dropped: list  # nodes made dead by the rewrite (the Transpose)


def weight_sites(graph) -> list[WeightSite]:
    sites = []
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) != 2 or node.inputs[1] is None:
            continue
        b = node.inputs[1]
        if node.op_type == "Gemm":
            attrs = {k: a.value for k, a in node.attributes.items()}
            if (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or not attrs.get("transB", 0)
                    or not b.is_initializer() or len(b.shape) != 2):
                continue
            sites.append(WeightSite(node, b, True, []))
        elif b.is_initializer() and len(b.shape) == 2:
            sites.append(WeightSite(node, b, False, []))
        else:
            producer = b.producer()
            if (producer is not None and producer.op_type == "Transpose" and producer.inputs[0] is not None
                    and producer.inputs[0].is_initializer() and len(producer.inputs[0].shape) == 2):
                perm = producer.attributes.get("perm")
                if perm is None or list(perm.as_ints()) == [1, 0]:
                    sites.append(WeightSite(node, producer.inputs[0], True, [producer]))
    return sites


class _Memo:
    """The last weight's quantized tensors: the graph writer asks for them one after another."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, key, compute):
        if key != self.key:
            self.key, self.value = None, None
            self.value, self.key = compute(), key
        return self.value


def _weight_kn(site: WeightSite) -> np.ndarray:
    """The weight as MatMul's fp32 ``[K, N]``, read once from its lazy tensor."""
    w = site.weight.const_value.numpy().astype(np.float32)
    return np.ascontiguousarray(w.T if site.transposed else w)


def _kn_shape(site: WeightSite) -> tuple[int, int]:
    rows, cols = (int(d) for d in site.weight.shape)
    return (cols, rows) if site.transposed else (rows, cols)


def int4_blocks(w_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 ``[N, k_blocks, block/2]``, fp32 scales ``[N * k_blocks]``): symmetric, by
    onnxruntime's own packing kernel."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    k, n = w_kn.shape
    k_blocks = (k + block_size - 1) // block_size
    if k_blocks * block_size != k:
        w_kn = np.pad(w_kn, ((0, k_blocks * block_size - k), (0, 0)))
    packed = np.zeros((n, k_blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, w_kn, scales, zero_points, block_size, n, k, True)
    return packed, scales.reshape(-1)


def dividing_block(k: int, block_size: int) -> int:
    """The largest block ≤ ``block_size`` (halving, down to 16) that divides ``k``: TensorRT's
    parser takes only whole blocks. A 7B's dimensions (4096, 11008) all take 64."""
    block = block_size
    while k % block and block > 16:
        block //= 2
    if k % block:
        raise ValueError(f"no INT4 block of 16 or more divides the input dimension {k}")
    return block


def int4_qdq_blocks(w_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(INT4 ``[K, N]`` packed two per byte, low nibble first, fp32 scales ``[k_blocks, N]``),
    symmetric, blocks along K, by onnxruntime's own kernel."""
    from onnxruntime.capi._pybind_state import quantize_qdq_matmul_4bits

    k, n = w_kn.shape
    k_blocks = (k + block_size - 1) // block_size
    packed = np.zeros((k * n + 1) // 2, dtype=np.uint8)
    scales = np.zeros((k_blocks, n), dtype=np.float32)
    zero_points = np.zeros((n * k_blocks + 1) // 2, dtype=np.uint8)
    quantize_qdq_matmul_4bits(packed, w_kn, scales, zero_points, block_size, n, k, True)
    return packed, scales


def int8_symmetric(w_kn: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """quantize_dynamic's int8 weight: per tensor, symmetric, scale max|W| / 127."""
    absmax = float(np.abs(w_kn).max())
    scale = np.float32(absmax / 127.0 if absmax > 0 else 1.0)
    return np.clip(np.round(w_kn / scale), -127, 127).astype(np.int8), scale


def int8_per_channel(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_static's symmetric per-channel int8 weight: one scale per output column
    (max |W[:, n]| / 127; an all-zero column takes scale 1)."""
    absmax = np.abs(w_kn).max(axis=0)
    scale = np.where(absmax > 0, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    return np.clip(np.round(w_kn / scale), -127, 127).astype(np.int8), scale


def _initializer(graph, name: str, shape, dtype, compute):
    import onnx_ir as ir

    if name in graph.initializers:  # a weight read by two MatMuls (a prune point's q/k): stored once
        return graph.initializers[name]
    value = ir.Value(name=name, shape=ir.Shape(list(shape)), type=ir.TensorType(dtype))
    value.const_value = ir.LazyTensor(lambda: ir.tensor(compute(), name=name), dtype=dtype,
                                      shape=ir.Shape(list(shape)), name=name)
    graph.register_initializer(value)
    return value


def _retire(graph, site: WeightSite) -> None:
    graph.remove(site.node, safe=True)
    for node in site.dropped:  # a transposed weight another MatMul still reads stays until that one goes
        if not any(out.uses() for out in node.outputs):
            graph.remove(node, safe=True)
    if not site.weight.uses():
        graph.initializers.pop(site.weight.name)


def to_int4(graph, block_size: int) -> list[str]:
    """Every weight MatMul of ``graph`` → ``MatMulNBits`` (4 bits, ``block_size``); their names."""
    import onnx_ir as ir

    memo, done = _Memo(), []
    for site in weight_sites(graph):
        k, n = _kn_shape(site)
        k_blocks = (k + block_size - 1) // block_size
        base = site.weight.name

        def quantized(site=site):
            return memo.get(site.weight.name, lambda: int4_blocks(_weight_kn(site), block_size))

        packed = _initializer(graph, f"{base}_Q4", (n, k_blocks, block_size // 2), ir.DataType.UINT8,
                              lambda q=quantized: q()[0])
        scales = _initializer(graph, f"{base}_scales", (n * k_blocks,), ir.DataType.FLOAT,
                              lambda q=quantized: q()[1])
        new = ir.node("MatMulNBits", [site.node.inputs[0], packed, scales], domain="com.microsoft",
                      attributes={"K": k, "N": n, "bits": 4, "block_size": block_size},
                      name=f"{site.node.name}_Q4")
        _swap(graph, site, new)
        done.append(new.name)
    return done


def to_int4_qdq(graph, block_size: int) -> list[str]:
    """Every weight MatMul of ``graph`` → MatMul on a blocked INT4 DequantizeLinear; their names."""
    import onnx_ir as ir

    memo, done = _Memo(), []
    for site in weight_sites(graph):
        k, n = _kn_shape(site)
        block = dividing_block(k, block_size)
        k_blocks = k // block
        base = site.weight.name
        scale_dtype = site.weight.const_value.dtype  # the graph's float type (fp16 in int4 bundles)
        scale_np = scale_dtype.numpy()

        def quantized(site=site, block=block):
            return memo.get(site.weight.name, lambda: int4_qdq_blocks(_weight_kn(site), block))

        weight = graph.initializers.get(f"{base}_DQ_Q4")
        if weight is None:
            weight = ir.Value(name=f"{base}_DQ_Q4", shape=ir.Shape([k, n]), type=ir.TensorType(ir.DataType.INT4))
            weight.const_value = ir.LazyTensor(
                lambda q=quantized, name=weight.name, shape=(k, n): ir.PackedTensor(q()[0], ir.DataType.INT4,
                                                                                    shape=list(shape), name=name),
                dtype=ir.DataType.INT4, shape=ir.Shape([k, n]), name=weight.name)
            graph.register_initializer(weight)
        scales = _initializer(graph, f"{base}_DQ_scales", (k_blocks, n), scale_dtype,
                              lambda q=quantized, t=scale_np: q()[1].astype(t))
        name = site.node.name or base
        dequant = ir.node("DequantizeLinear", [weight, scales], attributes={"axis": 0, "block_size": block},
                          name=f"{name}_DequantizeLinear")
        graph.insert_before(site.node, dequant)
        _swap(graph, site, ir.node("MatMul", [site.node.inputs[0], dequant.outputs[0]], name=f"{name}_Q4"))
        done.append(name)
    return done


def to_int8_dynamic(graph) -> list[str]:
    """Every weight MatMul of ``graph`` → quantize_dynamic's MatMulInteger pattern; their names."""
    import onnx_ir as ir

    memo, done, activations = _Memo(), [], {}
    for site in weight_sites(graph):
        k, n = _kn_shape(site)
        base = site.weight.name
        x = site.node.inputs[0]

        def quantized(site=site):
            return memo.get(site.weight.name, lambda: int8_symmetric(_weight_kn(site)))

        weight = _initializer(graph, f"{base}_quantized", (k, n), ir.DataType.INT8, lambda q=quantized: q()[0])
        scale = _initializer(graph, f"{base}_scale", (), ir.DataType.FLOAT,
                             lambda q=quantized: np.array(q()[1], dtype=np.float32))
        zero = _initializer(graph, f"{base}_zero_point", (), ir.DataType.INT8, lambda: np.array(0, dtype=np.int8))
        if x.name not in activations:
            quant = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=f"{x.name}_QuantizeLinear")
            if x.producer() is not None:
                graph.insert_after(x.producer(), quant)
            else:  # a graph input
                graph.insert_before(next(iter(graph)), quant)
            activations[x.name] = quant.outputs
        xq, xs, xzp = activations[x.name]
        name = site.node.name or base
        matmul = ir.node("MatMulInteger", [xq, weight, xzp, zero], name=f"{name}_quant")
        cast = ir.node("Cast", [matmul.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{name}_cast")
        scales = ir.node("Mul", [xs, scale], name=f"{name}_scales_mul")
        out = ir.node("Mul", [cast.outputs[0], scales.outputs[0]], name=f"{name}_output_scale_mul")
        for extra in (matmul, cast, scales):
            graph.insert_before(site.node, extra)
        _swap(graph, site, out)
        done.append(name)
    return done


def to_int8_qdq(graph, input_absmax) -> tuple[list[str], list[str]]:
    """Every weight MatMul of ``graph`` whose input range ``input_absmax(weight_name)`` knows →
    MatMul on int8 Q/DQ; (their names, the names of those left in float for want of a range)."""
    import onnx_ir as ir

    memo, done, skipped = _Memo(), [], []
    sites = weight_sites(graph)
    ranges: dict[str, float] = {}  # per activation tensor: max over the Linears reading it
    for site in sites:
        absmax = input_absmax(site.weight.name)
        if absmax is not None:
            ranges[site.node.inputs[0].name] = max(ranges.get(site.node.inputs[0].name, 0.0), absmax)
    weights, activations = {}, {}
    for site in sites:
        x, base = site.node.inputs[0], site.weight.name
        name = site.node.name or base
        if x.name not in ranges:
            skipped.append(name)
            continue
        if base not in weights:
            k, n = _kn_shape(site)

            def quantized(site=site):
                return memo.get(site.weight.name, lambda: int8_per_channel(_weight_kn(site)))

            weight = _initializer(graph, f"{base}_quantized", (k, n), ir.DataType.INT8, lambda q=quantized: q()[0])
            scale = _initializer(graph, f"{base}_scale", (n,), ir.DataType.FLOAT, lambda q=quantized: q()[1])
            zero = _initializer(graph, f"{base}_zero_point", (n,), ir.DataType.INT8,
                                lambda n=n: np.zeros(n, dtype=np.int8))
            dequant = ir.node("DequantizeLinear", [weight, scale, zero], attributes={"axis": 1},
                              name=f"{base}_DequantizeLinear")
            graph.insert_before(site.node, dequant)
            weights[base] = dequant.outputs[0]
        if x.name not in activations:
            scale = _initializer(graph, f"{x.name}_scale", (), ir.DataType.FLOAT,
                                 lambda a=ranges[x.name]: np.array(a / 127.0 if a > 0 else 1.0, dtype=np.float32))
            zero = _initializer(graph, f"{x.name}_zero_point", (), ir.DataType.INT8,
                                lambda: np.array(0, dtype=np.int8))
            quant = ir.node("QuantizeLinear", [x, scale, zero], name=f"{x.name}_QuantizeLinear")
            dequant = ir.node("DequantizeLinear", [quant.outputs[0], scale, zero], name=f"{x.name}_DequantizeLinear")
            if x.producer() is not None:
                graph.insert_after(x.producer(), [quant, dequant])
            else:  # a graph input
                first = next(iter(graph))
                graph.insert_before(first, [quant, dequant])
            activations[x.name] = dequant.outputs[0]
        _swap(graph, site, ir.node("MatMul", [activations[x.name], weights[base]], name=f"{name}_quant"))
        done.append(name)
    return done, skipped


def store_large_floats_as_fp16(graph, min_bytes: int = 64 * 1024) -> int:
    """The lazy form of ``convert``'s half storage: fp32 initializers of ``min_bytes`` or more
    that no quantizer took are stored as fp16 and cast back to fp32 in the graph."""
    import onnx_ir as ir

    first, count = next(iter(graph)), 0
    for value in list(graph.initializers.values()):
        if value.dtype != ir.DataType.FLOAT or value.const_value is None or value.const_value.size * 4 < min_bytes:
            continue
        source = value.const_value
        half = _initializer(graph, f"{value.name}_fp16", tuple(value.shape), ir.DataType.FLOAT16,
                            lambda t=source: t.numpy().astype(np.float16))
        cast = ir.node("Cast", [half], attributes={"to": ir.DataType.FLOAT}, name=f"{value.name}_to_fp32")
        cast.outputs[0].name = f"{value.name}_fp32"
        graph.insert_before(first, cast)
        value.replace_all_uses_with(cast.outputs[0], replace_graph_outputs=True)
        graph.initializers.pop(value.name)
        count += 1
    return count


def _swap(graph, site: WeightSite, new) -> None:
    """Put ``new`` where the site's node was and hand it the node's output uses."""
    graph.insert_before(site.node, new)
    old, out = site.node.outputs[0], new.outputs[0]
    name, old.name = old.name, f"{old.name}_replaced"
    out.name, out.shape, out.type = name, old.shape, old.type
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    _retire(graph, site)


def _stage(model, rewrite, detail) -> dict:
    nodes = rewrite(model.graph)
    if any(True for n in model.graph if n.domain == "com.microsoft"):
        model.opset_imports.setdefault("com.microsoft", 1)
    return detail(nodes)


def int4_stage(model, block_size: int) -> dict:
    """int4-cpu's language-model stage: the rewrite and the manifest detail (``convert``'s)."""
    from .convert import int4_detail

    return _stage(model, lambda g: to_int4(g, block_size), lambda nodes: int4_detail(block_size, nodes))


def int4_qdq_stage(model, block_size: int) -> dict:
    """int4's language-model stage (TensorRT form): blocked INT4 Q/DQ needs opset 21."""
    from .convert import int4_qdq_detail

    model.opset_imports[""] = max(model.opset_imports.get("", 0), INT4_QDQ_OPSET)
    return _stage(model, lambda g: to_int4_qdq(g, block_size), lambda nodes: int4_qdq_detail(block_size, nodes))


def int8_qdq_stage(model, input_absmax) -> dict:
    """int8's stages (TensorRT form): weight MatMuls on calibrated Q/DQ, large floats stored fp16."""
    from .convert import int8_qdq_streamed_detail

    done, skipped = to_int8_qdq(model.graph, input_absmax)
    store_large_floats_as_fp16(model.graph)
    return int8_qdq_streamed_detail(done, skipped)


def int8_dynamic_stage(model) -> dict:
    from .convert import int8_dynamic_detail

    return _stage(model, to_int8_dynamic, int8_dynamic_detail)
