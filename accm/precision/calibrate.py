"""int8 calibration without the whole model: the bundle's pipeline in PyTorch, decoder layers streamed.

onnxruntime's calibrator runs a whole fp32 graph (28 GB of weights for a 7B). Here the exporter's
own stage modules run eagerly on a model built on the meta device, driven by the runtime's
``Pipeline`` so they see exactly what the bundle will see (pruned image tokens, prompt template,
greedy decode steps). The vision tower, projector, embeddings, final norm and lm_head are read
once; each decoder layer's weights are read from the checkpoint when the layer is called and
dropped when the layer after next is called (a prune point re-reads the previous layer's q/k
projections). Hooks record max |x| of every Linear's input: the activation ranges of the
graphs' weight MatMuls.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..bundle import names
from ..export.streamed import CheckpointReader, WeightlessModel


class TorchStage:
    """A stage module behind the runner interface the pipeline calls (``run(feeds) -> outputs``)."""

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str]):
        self.module, self.input_names, self.output_names = module, inputs, outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.input_names])
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.float().numpy() if t.is_floating_point() else t.numpy()
                for name, t in zip(self.output_names, out)}


class StreamedWeights:
    """Real weights for a meta-device model: resident modules now, ``layers`` on demand.

    At most two of ``layers`` hold weights at a time (``peak_layers`` records it)."""

    def __init__(self, model: nn.Module, layers, weightless: WeightlessModel, checkpoint: CheckpointReader):
        self.weightless, self.checkpoint = weightless, checkpoint
        tensor_names: dict[int, list[str]] = {}  # every name of each tensor (tied ones have two)
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            tensor_names.setdefault(id(t), []).append(name)
        # by (module, attribute): the meta tensors themselves are replaced as layers come and go
        self.names = {(id(module), key): tensor_names[id(t)] for module in model.modules()
                      for table in (module._parameters, module._buffers) for key, t in table.items() if t is not None}
        self.layers = list(layers)
        self.loaded: set[int] = set()
        self.peak_layers = 0
        streamed = {id(m) for layer in self.layers for m in layer.modules()}
        self._real: dict[str, torch.Tensor] = {}  # tied tensors are read once
        for module in model.modules():
            if id(module) not in streamed:
                self._fill(module)
        self._real.clear()
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: self._enter(i))

    def _fill(self, module: nn.Module) -> None:
        for table in (module._parameters, module._buffers):
            for key, t in table.items():
                if t is None or not t.is_meta:
                    continue
                names = self.names[(id(module), key)]
                real = self._real.get(names[0])
                if real is None:
                    real = self._real[names[0]] = self.weightless.reader(names, self.checkpoint)().to(t.dtype)
                table[key] = nn.Parameter(real, requires_grad=False) if table is module._parameters else real

    def _enter(self, index: int) -> None:
        for j in [j for j in self.loaded if j not in (index, index - 1)]:
            for module in self.layers[j].modules():
                for key, p in module._parameters.items():
                    if p is not None:
                        module._parameters[key] = nn.Parameter(torch.empty_like(p, device="meta"),
                                                               requires_grad=False)
            self.loaded.discard(j)
        if index not in self.loaded:
            for module in self.layers[index].modules():
                self._fill(module)
            self._real.clear()
            self.loaded.add(index)
        self.peak_layers = max(self.peak_layers, len(self.loaded))


class InputRanges:
    """max |x| of every Linear's input, by the Linear's weight name.

    ``left_pads`` (set while a left-padded batch is prefilled): how many leading positions of
    each row are padding, left out of the ranges. Pruning inside prefill keeps the text before
    the image in place, so the count holds at every layer."""

    def __init__(self, model: nn.Module):
        self.absmax: dict[str, float] = {}
        self.left_pads: torch.Tensor | None = None
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.register_forward_pre_hook(lambda m, args, key=f"{name}.weight": self._record(key, args[0]))

    def _record(self, key: str, x: torch.Tensor) -> None:
        x = x.detach().abs()
        pads = self.left_pads
        if pads is not None and x.dim() == 3 and x.shape[0] == len(pads) and x.shape[1] > 1:
            real = torch.arange(x.shape[1])[None, :] >= pads[:, None]
            x = x[real]
        if x.numel():
            self.absmax[key] = max(self.absmax.get(key, 0.0), float(x.max()))


class PrefillRunner(TorchStage):
    """The prefill runner: tells the ranges which positions are padding while it runs."""

    def __init__(self, module: nn.Module, inputs: list[str], outputs: list[str], ranges: InputRanges):
        super().__init__(module, inputs, outputs)
        self.ranges = ranges

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.ranges.left_pads = torch.from_numpy((np.asarray(feeds[names.ATTENTION_MASK]) == 0).sum(1))
        try:
            return super().run(feeds)
        finally:
            self.ranges.left_pads = None


@dataclasses.dataclass
class Calibration:
    absmax: dict[str, float]  # Linear weight name → max |input|
    feeds: dict[str, list[dict[str, np.ndarray]]]  # recorded inputs of the stages quantized whole (ACCM's)
    samples: int
    peak_layers: int  # decoder layers ever holding weights at once
    summary: dict = dataclasses.field(default_factory=dict)  # for the manifest

    def input_absmax(self, weight_names: list[str]) -> float | None:
        """The recorded input range of the Linear owning any of ``weight_names``."""
        for name in weight_names:
            if name in self.absmax:
                return self.absmax[name]
        return None


def torch_pipeline(jobs, manifest: dict, processor, ranges: InputRanges):
    """The runtime's pipeline over the stage modules of ``jobs``, run eagerly."""
    from tokenizers import Tokenizer

    from ..runtime.pipeline import Pipeline

    stages = {job.stage: (PrefillRunner(job.module, job.inputs, job.outputs, ranges) if job.stage == names.LLM_PREFILL
                          else TorchStage(job.module, job.inputs, job.outputs)) for job in jobs}
    tokenizer = Tokenizer.from_str(processor.tokenizer.backend_tokenizer.to_str())
    return Pipeline.from_stages(manifest, tokenizer, stages, provider="torch")


#: samples answered together: each pass over the decoder reads every layer from the checkpoint,
#: so batching divides that reading (measured at 7B: 80 % of the time at one sample per pass)
CALIBRATION_BATCH = 8


def calibrate(streamer, plan_stages, manifest: dict, samples: list[tuple], extra_jobs=(), record=(),
              progress: bool = True, batch: int = CALIBRATION_BATCH) -> Calibration:
    """Run ``samples`` through the bundle's pipeline in PyTorch and record activation ranges.

    ``streamer``: the export's ``StreamedExport`` (its config, checkpoint and donor buffers);
    ``plan_stages(loaded_model) -> jobs``: the core stage jobs built on a given model;
    ``extra_jobs``: ACCM's jobs (small real modules), whose feeds in ``record`` are kept. Samples
    go ``batch`` at a time, each row decoding its own greedy tokens (4; padding is left out of the
    ranges)."""
    from transformers import LlavaForConditionalGeneration

    from ..models.loading import LoadedModel
    from .record import run_samples

    lm = streamer.loaded
    with torch.device("meta"):
        model = LlavaForConditionalGeneration._from_config(lm.model.config, dtype=torch.float32).eval()
    weights = StreamedWeights(model, model.model.language_model.layers, streamer.weightless, streamer.checkpoint)
    ranges = InputRanges(model)
    jobs = plan_stages(LoadedModel(lm.source, model, lm.processor, lm.template))
    pipe = torch_pipeline(jobs + list(extra_jobs), manifest, lm.processor, ranges)
    feeds = run_samples(pipe, samples, progress=progress, record=tuple(record), batch=batch, ignore_eos=True)
    return Calibration(ranges.absmax, feeds, len(samples), weights.peak_layers)
