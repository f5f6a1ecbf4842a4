"""``accm-export``: a model plus a pruning configuration → a verified bundle of ONNX graphs.

Stages: ``vision.onnx`` (CLIP tower + projector + vision-side top-k with a static k),
``embed.onnx`` (token embedding lookup), ``llm_prefill.onnx`` (the LLM-side schedule inside the
graph) and ``llm_decode.onnx`` (one token, each layer's past KV at its own length), plus the
tokenizer and ``manifest.json``. Written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from torch.export import Dim
from tqdm import tqdm

from .. import __version__
from ..bundle import manifest, names
from ..bundle.schema import PRECISIONS
from ..data.preprocess import ImageSpec
from ..errors import AccmUserError
from ..models.dims import patch_count, text_dims
from ..models.loading import LoadedModel, load_llava
from ..models.registry import checkpoint_digest
from ..pruning.schedule import Schedule
from ..pruning.vision import encoder_layers, resolve_layer
from .compat import requirements
from .graphs import (
    CaptionDecodeStage,
    CaptionPrefixStage,
    DecodeStage,
    EmbedStage,
    PrefillStage,
    SelectorStage,
    VisionStage,
)
from .onnx_io import export_module, share_weights, shared_weight_table

TARGETS = ("ort", "trt")


class ExportError(AccmUserError, ValueError):
    """An export configuration that cannot work for this model."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    precision: str = "fp32"
    vision_keep: int | None = None
    schedule: Schedule = dataclasses.field(default_factory=Schedule.none)
    score_layer: int | None = None
    target: str = "ort"
    accm: bool = False  # add the ACCM caption model and selector
    accm_dir: str | None = None  # trained modules (default: <model>/accm)
    calib_dir: str | None = None  # int8: the user's images + prompts.jsonl (default: built-in ShapesVQA)
    calib_samples: int = 32

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise ExportError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.vision_keep is not None and not 1 <= self.vision_keep:
            raise ExportError(f"--vision-keep must be >= 1, got {self.vision_keep}")
        if self.accm and self.vision_keep is None:
            raise ExportError("--accm compensates vision-side pruning: give --vision-keep K (e.g. 18)")

    @classmethod
    def from_options(cls, options: dict) -> ExportConfig:
        """From the JSON-able options a default bundle's cache key holds (``options()``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in options.items() if k in fields}
        kwargs["schedule"] = Schedule.from_json(options["schedule"]) if isinstance(options.get("schedule"), dict) \
            else Schedule.parse(options.get("schedule"))
        return cls(**kwargs)

    def options(self) -> dict:
        return {**dataclasses.asdict(self), "schedule": self.schedule.to_json()}

    def n_image(self, n_patches: int) -> int:
        return n_patches if self.vision_keep is None else min(self.vision_keep, n_patches)


@dataclasses.dataclass
class ExportPlan:
    """What an export decides once, from the config and the model, for every step after it."""

    n_patches: int
    n_image: int  # image tokens the LLM receives (the vision keep, clamped; all when not pruned)
    counts: list[int]  # image tokens per decoder layer
    dims: dict
    spec: ImageSpec
    vision: VisionStage
    prefill: PrefillStage
    decode: DecodeStage

    @property
    def vision_keep(self) -> int | None:
        return self.n_image if self.n_image < self.n_patches else None


@dataclasses.dataclass
class TraceJob:
    """One graph to trace: the module, sample inputs, I/O names and dynamic axes."""

    stage: str
    module: torch.nn.Module
    sample: tuple
    inputs: list[str]
    outputs: list[str]
    dynamic: tuple


def plan_export(lm: LoadedModel, config: ExportConfig) -> ExportPlan:
    model = lm.model
    n_patches = patch_count(model.config.vision_config)
    n_image = config.n_image(n_patches)
    dims = text_dims(model.config)
    try:
        counts = config.schedule.layer_counts(dims["num_layers"], n_image)
        if config.score_layer is not None:
            resolve_layer(len(encoder_layers(model.model.vision_tower)), config.score_layer)
    except ValueError as e:
        raise ExportError(str(e)) from None
    return ExportPlan(n_patches, n_image, counts, dims, ImageSpec.from_hf(lm.processor.image_processor),
                      VisionStage(model, config.vision_keep, config.score_layer, config.target),
                      PrefillStage(model, n_image, config.schedule, config.target), DecodeStage(model, counts))


def core_jobs(lm: LoadedModel, plan: ExportPlan) -> list[TraceJob]:
    """The four graphs every bundle has, with batch-2 samples (dynamo specialises size-1 axes)."""
    hidden, kvh, hd = plan.dims["hidden"], plan.dims["num_kv_heads"], plan.dims["head_dim"]
    batch, seq = Dim("batch"), Dim("seq")
    length, n_image = plan.n_image + 13, plan.n_image
    ids = torch.ones(2, length, dtype=torch.long)
    ids[:, 4:4 + n_image] = lm.model.config.image_token_index
    prefill_args = (ids, torch.randn(2, length, hidden), torch.ones(2, length, dtype=torch.long),
                    torch.arange(length).expand(2, length).contiguous())
    decode = plan.decode
    pasts = [Dim(f"past{g}") for g in range(decode.n_groups)]
    lengths = [37 + 5 * g for g in range(decode.n_groups)]
    past, past_shapes = [], []
    for g in decode.groups:
        past += [torch.randn(2, kvh, lengths[g], hd) for _ in range(2)]
        past_shapes += [{0: batch, 2: pasts[g]}] * 2
    decode_args = (torch.randn(2, 1, hidden), torch.full((2, 1), 50, dtype=torch.long),
                   *[torch.ones(2, n + 1, dtype=torch.long) for n in lengths], *past)
    decode_dyn = ({0: batch}, {0: batch}, tuple([{0: batch, 1: p + 1} for p in pasts] + past_shapes))
    return [
        TraceJob(names.VISION, plan.vision, (torch.randn(2, 3, plan.spec.size, plan.spec.size),), [names.PIXEL_VALUES],
                 plan.vision.output_names(), ({0: batch},)),
        TraceJob(names.EMBED, EmbedStage(lm.model), (torch.ones(2, 7, dtype=torch.long),), [names.INPUT_IDS],
                 [names.INPUTS_EMBEDS], ({0: batch, 1: seq},)),
        TraceJob(names.LLM_PREFILL, plan.prefill, prefill_args,
                 [names.INPUT_IDS, names.INPUTS_EMBEDS, names.ATTENTION_MASK, names.POSITION_IDS],
                 plan.prefill.output_names(), tuple({0: batch, 1: seq} for _ in range(4))),
        TraceJob(names.LLM_DECODE, decode, decode_args, decode.input_names(), decode.output_names(), decode_dyn),
    ]


def stage_table(jobs: list[TraceJob]) -> dict:
    """The manifest's ``stages`` entry of each job."""
    return {job.stage: {"file": f"{job.stage}.onnx", "inputs": job.inputs, "outputs": job.outputs} for job in jobs}


def trace_jobs(jobs: list[TraceJob], out: Path, progress: bool, export=None) -> dict:
    """Trace every job into ``out`` with ``export`` (default: the module's own weights)."""
    bar = tqdm(total=len(jobs), desc="export", unit="stage", disable=not progress)
    for job in jobs:
        bar.set_postfix_str(job.stage)
        if export is None:
            export_module(job.module, job.sample, out / f"{job.stage}.onnx", job.inputs, job.outputs, job.dynamic)
        else:
            export(job, out / f"{job.stage}.onnx")
        bar.update()
    bar.close()
    return stage_table(jobs)


def bundle_info(lm: LoadedModel, plan: ExportPlan, config: ExportConfig, stages: dict, accm: dict | None) -> dict:
    """The manifest body (``bundle.manifest.write_manifest`` adds the files, digests and format)."""
    tok = lm.processor.tokenizer
    info = {
        "toolkit_version": __version__,
        "source_model": {"name": lm.source.name, "repo_id": lm.source.repo_id,
                         "digest": checkpoint_digest(lm.source.path)},
        "precision": "fp32",
        "target": config.target,
        "pruning": {
            "vision_keep": plan.vision_keep, "score_layer": plan.vision.score_layer,
            "schedule": config.schedule.to_json(), "layer_counts": plan.counts,
            "prune_points": {str(k): v for k, v in plan.prefill.points.items()}, "layer_groups": plan.decode.groups,
        },
        "prompt_template": lm.template,
        "image": plan.spec.to_json(),
        "tokens": {"image_token_id": int(lm.model.config.image_token_index), "n_patches": plan.n_patches,
                   "n_image": plan.n_image, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                   "pad_token_id": tok.pad_token_id},
        "model": plan.dims,
        "tokenizer": "tokenizer.json",
        "stages": stages,
    }
    if accm is not None:
        info["accm"] = accm
    return info


def export_bundle(name: str | None, output: Path, config: ExportConfig, overwrite: bool = False,
                  progress: bool = True, loaded: LoadedModel | None = None) -> dict:
    """Export ``name`` (any --model value) into the bundle directory ``output``: plan → trace →
    write, in a temporary directory renamed into place when complete."""
    config.validate()
    if config.precision in STREAMED_PRECISIONS:
        return _export_streamed(name, output, config, overwrite, progress, loaded)
    lm = loaded or load_llava(name, dtype=torch.float32)
    plan = plan_export(lm, config)
    extra, accm = _accm_parts(lm, plan, config)
    jobs = core_jobs(lm, plan) + extra
    with manifest.staged_directory(Path(output), overwrite) as tmp:
        return _finish(tmp, lm, bundle_info(lm, plan, config, trace_jobs(jobs, tmp, progress), accm))


def _accm_parts(lm: LoadedModel, plan: ExportPlan, config: ExportConfig) -> tuple[list[TraceJob], dict | None]:
    """ACCM's stage jobs and manifest entry (none without ``--accm``)."""
    if not config.accm:
        return [], None
    if plan.vision_keep is None:
        raise ExportError("--accm needs vision-side pruning to leave discarded tokens")
    comp = load_compensator(lm, config.accm_dir)
    jobs = accm_jobs(comp, plan.n_patches - plan.n_image, Dim("batch"), lm.model.config.vision_config.hidden_size)
    return jobs, accm_manifest(comp)


def _finish(tmp: Path, lm: LoadedModel, info: dict) -> dict:
    """What every bundle gets once its graphs are written: prefill and decode share one weights
    file, the tokenizer, the runtime versions it needs, and the manifest."""
    share_weights(*(tmp / f"{s}.onnx" for s in names.SHARED_WEIGHT_STAGES))
    lm.processor.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    info["shared_weights"] = shared_weight_table(tmp, list(names.SHARED_WEIGHT_STAGES))
    info["runtime_requirements"] = requirements(tmp, [s["file"] for s in info["stages"].values()])
    return manifest.write_manifest(tmp, info)


#: precisions exported from a weightless trace with the checkpoint streamed in (``streamed``):
#: memory stays near one tensor (int8: one decoder layer) whatever the model size. fp32 loads the model.
STREAMED_PRECISIONS = ("fp16", "int8", "int4", "int8-cpu", "int4-cpu")


def _export_streamed(name, output: Path, config: ExportConfig, overwrite: bool, progress: bool,
                     loaded: LoadedModel | None) -> dict:
    """fp16: the core stages traced in fp16. int4: the same, the LLM's weight MatMuls on blocked
    INT4 Q/DQ (TensorRT's weight-only form). int8 (Q/DQ): traced in fp32, calibrated in PyTorch
    with the decoder layers streamed (``precision.calibrate``), vision and LLM weight MatMuls on
    int8 Q/DQ written one weight at a time. int8-cpu / int4-cpu: traced in fp32, the LLM's weight
    MatMuls quantized one weight at a time as they are written (``precision.streamed``), vision
    and embedding through onnxruntime's quantize_dynamic on their (small) fp32 graphs. ACCM's
    small modules go through the fp32 export and the usual converters (fp16 for int4, int8 Q/DQ
    on their recorded inputs for int8)."""
    from ..precision import convert
    from ..precision import streamed as quantize
    from .streamed import StreamedExport

    half = config.precision in ("fp16", "int4")
    streamer = StreamedExport.open(name, loaded, torch.float16 if half else torch.float32)
    lm = streamer.loaded
    plan = plan_export(lm, config)
    jobs = core_jobs(lm, plan)
    extra, accm = _accm_parts(lm, plan, config)
    info = bundle_info(lm, plan, config, stage_table(jobs + extra), accm)
    calibration = _calibrate(streamer, config, info, extra, progress) if config.precision == "int8" else None
    rewrites = {"int4-cpu": lambda model, sources: quantize.int4_stage(model, convert.INT4_BLOCK),
                "int4": lambda model, sources: quantize.int4_qdq_stage(model, convert.INT4_BLOCK),
                "int8-cpu": lambda model, sources: quantize.int8_dynamic_stage(model),
                "int8": lambda model, sources: quantize.int8_qdq_stage(
                    model, lambda weight: calibration.input_absmax(sources.get(weight, [])))}
    rewrite = rewrites.get(config.precision)
    rewritten = (names.VISION, names.LLM_PREFILL, names.LLM_DECODE) if config.precision == "int8" \
        else (names.LLM_PREFILL, names.LLM_DECODE)

    def export(job, path):
        # decode's weights are prefill's: it reads them from prefill's data file (written first)
        borrow = path.parent / f"{names.LLM_PREFILL}.onnx" if job.stage == names.LLM_DECODE else None
        if rewrite is not None and job.stage in rewritten:
            streamer.export(job, path, rewrite, borrow)
        elif half:
            streamer.export(job, path, borrow_from=borrow)
        else:
            streamer.export(job, scratch / path.name)
            streamer.details[job.stage] = _whole_graph(scratch / path.name, path, job.stage)

    def _whole_graph(src: Path, dst: Path, stage: str) -> dict:
        if half:
            return convert.to_fp16(src, dst)
        if calibration is not None:
            return convert.to_int8_qdq(src, dst, calibration.feeds.get(stage, []))
        return convert.to_int8_dynamic(src, dst)

    with manifest.staged_directory(Path(output), overwrite) as tmp:
        scratch = tmp / ".fp32"
        scratch.mkdir()
        trace_jobs(jobs, tmp, progress, export=export)
        detail = {job.stage: streamer.detail(tmp / f"{job.stage}.onnx") for job in jobs}
        trace_jobs(extra, scratch, progress)
        for job in extra:
            detail[job.stage] = _whole_graph(scratch / f"{job.stage}.onnx", tmp / f"{job.stage}.onnx", job.stage)
        shutil.rmtree(scratch)
        if calibration is not None:
            detail["calibration"] = calibration.summary
        info["precision"], info["precision_detail"] = config.precision, detail
        return _finish(tmp, lm, info)


def _calibrate(streamer, config: ExportConfig, info: dict, extra: list[TraceJob], progress: bool):
    """int8's activation ranges (and ACCM stages' inputs) from the calibration samples."""
    from ..precision.calibrate import calibrate
    from ..precision.data import builtin_samples, directory_samples

    samples = (directory_samples(config.calib_dir, config.calib_samples) if config.calib_dir
               else builtin_samples(config.calib_samples))
    calibration = calibrate(streamer, lambda lm: core_jobs(lm, plan_export(lm, config)), info, samples, extra,
                            record=names.ACCM_STAGES if extra else (), progress=progress)
    calibration.summary = {"source": str(config.calib_dir) if config.calib_dir else "ShapesVQA calib split",
                           "samples": len(samples), "decoder_layers_held_at_once": calibration.peak_layers}
    return calibration


def load_compensator(lm: LoadedModel, accm_dir: str | None):
    from ..compensation.compensator import Compensator

    directory = Path(accm_dir) if accm_dir else Path(lm.source.path) / "accm"
    if not (directory / "caption").is_dir() or not (directory / "selector").is_dir():
        raise ExportError(f"no trained ACCM modules in {directory} (train them with `accm-train accm`, "
                          "or pass --accm-dir)")
    return Compensator.load(directory, lm.processor.tokenizer)


def accm_jobs(comp, n_discarded: int, batch, vision_dim: int) -> list[TraceJob]:
    cfg = comp.caption.cfg
    heads, head_dim = cfg.lm_heads, cfg.hidden // cfg.lm_heads
    new, past, length = Dim("new"), Dim("past"), Dim("length")
    prefix = CaptionPrefixStage(comp.caption)
    decode = CaptionDecodeStage(comp.caption)
    selector = SelectorStage(comp.selector)
    kv = [torch.randn(2, heads, 5, head_dim) for _ in range(2 * cfg.lm_layers)]
    jobs = [
        (names.CAPTION_PREFIX, prefix,
         (torch.randn(2, n_discarded, vision_dim), torch.arange(n_discarded).expand(2, n_discarded).contiguous(),
          torch.rand(2, n_discarded)),
         [names.DISCARDED_FEATURES, names.DISCARDED_INDEX, names.DISCARDED_SCORES], [names.PREFIX],
         ({0: batch}, {0: batch}, {0: batch})),
        (names.CAPTION_EMBED, EmbedStage(comp.caption.lm), (torch.ones(2, 7, dtype=torch.long),), [names.INPUT_IDS],
         [names.INPUTS_EMBEDS], ({0: batch, 1: Dim("seq")},)),
        (names.CAPTION_DECODE, decode,
         (torch.randn(2, 3, cfg.hidden), torch.ones(2, 3, dtype=torch.long), torch.ones(2, 5, dtype=torch.long),
          torch.arange(5, 8).expand(2, 3).contiguous(), *kv),
         decode.input_names(), decode.output_names(),
         ({0: batch, 1: new}, {0: batch, 1: new}, {0: batch, 1: past}, {0: batch, 1: new},
          tuple({0: batch, 2: past} for _ in kv))),
        # M candidates = the caption model's beams (one fixed size per bundle; the runtime sends exactly that)
        (names.SELECTOR, selector, (torch.ones(2, cfg.beams, 9, dtype=torch.long),
                                    torch.ones(2, cfg.beams, 9, dtype=torch.long)),
         [names.INPUT_IDS, names.ATTENTION_MASK], [names.PROBS], ({0: batch, 2: length}, {0: batch, 2: length})),
    ]
    return [TraceJob(*job) for job in jobs]


def accm_manifest(comp) -> dict:
    cfg = comp.caption.cfg
    return {
        "beams": cfg.beams, "max_caption_tokens": cfg.max_caption_tokens, "prefix_len": cfg.prefix_len,
        "stop_token_ids": list(cfg.stop_token_ids), "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "layers": cfg.lm_layers, "heads": cfg.lm_heads,
        "head_dim": cfg.hidden // cfg.lm_heads, "hidden": cfg.hidden,
        "selector_max_tokens": comp.selector.cfg.max_text_tokens,
        "selector_text_format": comp.selector.cfg.text_format,
    }
