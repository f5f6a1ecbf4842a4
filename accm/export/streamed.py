"""Export without ever holding the model: trace a weightless copy, stream the checkpoint into the graph.

The model is built under a ``FakeTensorMode`` from its config alone (shapes and dtypes, no
storage), so tracing costs the same memory for a 7B as for accm-tiny. Each traced initializer
then becomes an ``onnx_ir.LazyTensor`` that reads its tensor from the checkpoint's safetensors
shards when written, and ``onnx_ir.save`` writes them to the external data file a bounded
number of bytes at a time: peak memory is the exporter's bookkeeping plus the largest tensor,
whatever the model size. The transposes the exporter puts in front of every Linear weight are
folded the same lazy way (onnxscript's constant folder would hold all of them at once).

Buffers are not in a checkpoint (RoPE's ``inv_freq``, CLIP's ``position_ids``); their values
come from a real copy of the model with one layer per tower, whose buffers are the same.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import re
import struct
import warnings
from pathlib import Path

import torch

from ..errors import AccmUserError
from .onnx_io import OPSET

# Prefixes a checkpoint may store a transformers-5 LLaVA parameter under: the llava-hf layout
# (``language_model.model.…``, ``vision_tower.vision_model.…``), transformers 5's own save
# layout (``vision_tower.…``) and the module names themselves.
_CHECKPOINT_PREFIXES = (
    ("lm_head.", ("language_model.lm_head.", "lm_head.")),
    ("model.language_model.", ("language_model.model.", "model.language_model.")),
    ("model.vision_tower.", ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.")),
    ("model.multi_modal_projector.", ("multi_modal_projector.", "model.multi_modal_projector.")),
)
#: ops the fp16 trace computes in fp32 (HF's RMSNorm upcasts, RoPE angles, our fp32 scores);
#: recorded per stage so a manifest says where fp32 survived
KEPT_FP32_OPS = ("TopK", "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Cos", "Sin")
SMALL_INITIALIZER = 1 << 16  # elements; larger weights join the graph after optimisation
_LAYER = re.compile(r"\.layers\.\d+\.")


class CheckpointReader:
    """One tensor at a time from a checkpoint directory's safetensors files.

    Read with plain file reads rather than ``safetensors.safe_open``: that memory-maps whole
    shards, and every page it touches stays counted in the process's RSS until the map closes
    (14 GB for a 7B), while a read buffer is freed as soon as the tensor is written.
    """

    _DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
               "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8}

    def __init__(self, directory: Path):
        files = sorted(Path(directory).glob("*.safetensors"))
        if not files:
            raise AccmUserError(f"{directory} has no .safetensors weights; fp16, int4, int8-cpu and int4-cpu exports "
                                "stream them one tensor at a time (convert the checkpoint with save_pretrained, or "
                                "export --precision fp32)")
        self._where: dict[str, tuple[Path, int, dict]] = {}
        for file in files:
            with open(file, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            for key, entry in header.items():
                self._where[key] = (file, 8 + size, entry)

    def key_for(self, model_name: str) -> str:
        for new, olds in _CHECKPOINT_PREFIXES:
            if model_name.startswith(new):
                for old in olds:
                    if old + model_name[len(new):] in self._where:
                        return old + model_name[len(new):]
        if model_name in self._where:
            return model_name
        raise KeyError(f"the checkpoint has no tensor for {model_name}")

    def tensor(self, key: str) -> torch.Tensor:
        file, base, entry = self._where[key]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        with open(file, "rb") as f:
            f.seek(base + begin)
            f.readinto(buffer)
        dtype = self._DTYPES[entry["dtype"]]
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])


class WeightlessModel:
    """A LLaVA built from its config under fake mode, plus a one-layer real copy for its buffers."""

    def __init__(self, config, dtype: torch.dtype):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers import LlavaForConditionalGeneration

        self.dtype = dtype
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        with self.mode:
            self.model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
        small = copy.deepcopy(config)
        small.text_config.num_hidden_layers = 1
        small.vision_config.num_hidden_layers = 1
        small.text_config.intermediate_size = small.vision_config.intermediate_size = 1
        small.text_config.vocab_size = 8  # no buffer depends on these sizes
        small.text_config.pad_token_id = None
        donor = LlavaForConditionalGeneration._from_config(small, dtype=dtype)
        self.buffers = {n: b.detach().clone() for n, b in donor.named_buffers()}
        del donor
        # every name of each tensor (a tied lm_head is also the embedding table)
        self.names: dict[int, list[str]] = {}
        for n, t in [*self.model.named_parameters(remove_duplicate=False),
                     *self.model.named_buffers(remove_duplicate=False)]:
            self.names.setdefault(id(t), []).append(n)

    def reader(self, model_names: list[str], checkpoint: CheckpointReader):
        """A function returning the tensor behind ``model_names``: from the checkpoint, or a buffer."""
        for name in model_names:
            try:
                key = checkpoint.key_for(name)
            except KeyError:
                continue
            return lambda: checkpoint.tensor(key)
        for name in model_names:
            buffer = self.buffers.get(_LAYER.sub(".layers.0.", name))
            if buffer is not None:
                return lambda: buffer
        raise AccmUserError(f"the checkpoint has no tensor for {model_names[0]} (is it a LLaVA checkpoint of "
                            "this configuration?)")


def _ir_dtype(dtype: torch.dtype):
    import onnx_ir as ir

    return {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16, torch.int64: ir.DataType.INT64,
            torch.bfloat16: ir.DataType.BFLOAT16, torch.int32: ir.DataType.INT32,
            torch.bool: ir.DataType.BOOL}[dtype]


def _lazy(read, dtype: torch.dtype, shape, name: str):
    import onnx_ir as ir

    def load():
        return ir.tensor(read().to(dtype).contiguous().numpy(), name=name)

    return ir.LazyTensor(load, dtype=_ir_dtype(dtype), shape=ir.Shape(list(shape)), name=name)


def _bind_weights(graph, sources: dict, checkpoint: CheckpointReader, weightless: WeightlessModel) -> dict:
    """Give every traced initializer its checkpoint tensor (or donor buffer): small ones now,
    large ones as ``{name: LazyTensor}`` to attach after the graph optimiser, which otherwise
    would read them and hold them (measured: its RSS grew by the model's size). Matrices are
    always deferred: folded by the optimiser they would lose the names the quantizers look
    their calibration up by."""
    deferred = {}
    for name, value in graph.initializers.items():
        model_names = sources.get(name)
        if model_names is None:  # a constant the exporter made: real already
            continue
        fake = value.const_value
        lazy = _lazy(weightless.reader(model_names, checkpoint), _torch_dtype(fake), tuple(fake.shape), name)
        if lazy.size > SMALL_INITIALIZER or len(fake.shape) == 2:
            deferred[name] = lazy
            value.const_value = None
        else:
            value.const_value = lazy
    return deferred


def _torch_dtype(tensor) -> torch.dtype:
    raw = getattr(tensor, "raw", None)
    if isinstance(raw, torch.Tensor):
        return raw.dtype
    return {1: torch.float32, 10: torch.float16, 7: torch.int64, 6: torch.int32, 9: torch.bool,
            16: torch.bfloat16}[int(tensor.dtype)]


def _fold_weight_transposes(graph) -> int:
    """``Transpose(W)`` of a 2-D initializer → one lazily transposed initializer (what the
    exporter's constant folding does with real weights, without holding the results)."""
    import onnx_ir as ir

    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.inputs[0] is None or not node.inputs[0].is_initializer():
            continue
        source = node.inputs[0]
        perm = node.attributes.get("perm")
        if len(source.shape) != 2 or (perm is not None and list(perm.as_ints()) != [1, 0]):
            continue
        lazy = source.const_value
        new = ir.Value(name=f"{source.name}.T", shape=ir.Shape(list(reversed(list(source.shape)))),
                       type=source.type)
        new.const_value = ir.LazyTensor(
            lambda t=lazy, n=new.name: ir.tensor(t.numpy().T.copy(), name=n),
            dtype=lazy.dtype, shape=new.shape, name=new.name)
        graph.register_initializer(new)
        node.outputs[0].replace_all_uses_with(new)
        graph.remove(node, safe=True)
        folded += 1
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        del graph.initializers[name]
    return folded


@contextlib.contextmanager
def _quiet():
    for logger in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def export_streamed(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                    output_names: list[str], dynamic_shapes, weightless: WeightlessModel,
                    checkpoint: CheckpointReader, rewrite=None, borrow: dict | None = None) -> dict:
    """Trace ``module`` (built on ``weightless.model``) and write it with weights streamed from
    ``checkpoint`` into ``<path>.data``; returns the manifest's precision detail. ``rewrite(model,
    sources)`` may replace weight MatMuls while the weights are still lazy (``precision.streamed``;
    ``sources``: initializer name → the model's names for it) and returns the detail of what it did.
    ``borrow`` (``written_weights`` of a graph already written next to ``path``): the weights
    both graphs hold are not computed or written again but read from that graph's data file."""
    import onnx_ir as ir
    import onnxscript.optimizer

    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    sources = {name: weightless.names[id(t)] for name, t in tensors if id(t) in weightless.names}
    if isinstance(module, FloatIO):  # one varargs parameter: its shapes are one flat tuple
        flat = [d for spec in dynamic_shapes for d in (spec if isinstance(spec, (tuple, list)) else [spec])]
        dynamic_shapes = (tuple(flat),)
    with _quiet(), weightless.mode:
        program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=False,
                                    verbose=False)
    model = program.model
    deferred = _bind_weights(model.graph, sources, checkpoint, weightless)
    with _quiet():
        onnxscript.optimizer.optimize(model)
    for name, lazy in deferred.items():
        model.graph.initializers[name].const_value = lazy
    rewritten = rewrite(model, sources) if rewrite is not None else None
    _fold_weight_transposes(model.graph)
    for node in model.graph:
        node.metadata_props.clear()
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    kept = sorted({n.op_type for n in model.graph if n.op_type in KEPT_FP32_OPS
                   and any(v is not None and v.dtype == ir.DataType.FLOAT for v in n.inputs)})
    borrowed = _borrow(model.graph, borrow or {})
    ir.save(model, str(path), external_data=data, max_in_flight_bytes=256 << 20)
    if borrowed:
        _point_borrowed(path, borrowed)
    if rewritten is not None:
        return rewritten
    if weightless.dtype == torch.float32:
        return {"method": "fp32, weights streamed from the checkpoint"}
    return {"method": "traced in fp16, weights streamed from the checkpoint", "io": "fp32",
            "ops_kept_fp32": kept}


#: the module every stage is traced as (``FloatIO.stage``): initializers named after its
#: parameters hold the same values in every graph; the exporter's own constants do not
_PARAMETER_PREFIX = "stage."


def written_weights(path: Path) -> dict:
    """Where each parameter-derived tensor of the graph at ``path`` lies in its data file."""
    import onnx

    from .onnx_io import _external_initializers

    model = onnx.load(str(path), load_external_data=False)
    return {init.name: {"data_type": init.data_type, "dims": list(init.dims), **info}
            for init, info in _external_initializers(model) if init.name.startswith(_PARAMETER_PREFIX)}


def _borrow(graph, written: dict) -> dict:
    """Drop the values of initializers ``written`` already holds (same name, dtype and shape)."""
    borrowed = {}
    for name, value in graph.initializers.items():
        entry = written.get(name)
        if (entry is not None and value.const_value is not None and int(value.dtype) == entry["data_type"]
                and [int(d) for d in value.shape] == entry["dims"]):
            value.const_value = None
            borrowed[name] = entry
    return borrowed


def _point_borrowed(path: Path, borrowed: dict) -> None:
    """Add the borrowed initializers to the saved graph as references into the other data file."""
    import onnx

    from .onnx_io import _point

    model = onnx.load(str(path), load_external_data=False)
    for name, entry in borrowed.items():
        tensor = model.graph.initializer.add()
        tensor.name, tensor.data_type = name, entry["data_type"]
        tensor.dims.extend(entry["dims"])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        _point(tensor, entry["location"], int(entry.get("offset", 0)), int(entry["length"]))
    onnx.save(model, str(path))


def weight_bytes(directory: Path) -> int:
    index = Path(directory) / "model.safetensors.index.json"
    if index.exists():
        return int(json.loads(index.read_text())["metadata"]["total_size"])
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


class FloatIO(torch.nn.Module):
    """A stage traced in fp16 with fp32 inputs and outputs, the I/O every bundle has (the runtime
    and the other stages exchange fp32): floats are cast on the way in and out."""

    def __init__(self, stage: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.stage, self.dtype = stage, dtype

    def forward(self, *args):
        out = self.stage(*[a.to(self.dtype) if a.is_floating_point() else a for a in args])
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float() if o.is_floating_point() else o for o in out)


@dataclasses.dataclass
class StreamedExport:
    """What a streamed export of one checkpoint shares across its stages."""

    loaded: object  # models.loading.LoadedModel whose model is the weightless one
    weightless: WeightlessModel
    checkpoint: CheckpointReader
    dtype: torch.dtype
    details: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, name: str | None, loaded=None, dtype: torch.dtype = torch.float16) -> StreamedExport:
        """``name`` as any --model value (or the source of an already ``loaded`` model)."""
        from transformers import AutoConfig, AutoProcessor

        from ..models.loading import LoadedModel
        from ..models.registry import resolve
        from ..models.templates import template_from_processor

        source = loaded.source if loaded is not None else resolve(name)
        processor = loaded.processor if loaded is not None else AutoProcessor.from_pretrained(source.path)
        weightless = WeightlessModel(AutoConfig.from_pretrained(source.path), dtype)
        lm = LoadedModel(source, weightless.model, processor, template_from_processor(processor))
        return cls(lm, weightless, CheckpointReader(source.path), dtype)

    def export(self, job, path: Path, rewrite=None, borrow_from: Path | None = None) -> None:
        """Write ``job``'s stage to ``path``; ``borrow_from``: a graph written before whose weights
        this one shares (decode after prefill)."""
        borrow = written_weights(borrow_from) if borrow_from is not None else None
        self.details[path.stem] = export_streamed(FloatIO(job.module, self.dtype), job.sample, path, job.inputs,
                                                  job.outputs, job.dynamic, self.weightless, self.checkpoint,
                                                  rewrite, borrow)

    def detail(self, path: Path) -> dict:
        return self.details[path.stem]
