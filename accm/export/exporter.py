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


def write_graphs(jobs: list[TraceJob], out: Path, tokenizer, progress: bool) -> dict:
    """Trace every job into ``out`` (prefill and decode share one weights file), and the tokenizer."""
    bar = tqdm(total=len(jobs) + 1, desc="export", unit="stage", disable=not progress)
    stages = {}
    for job in jobs:
        bar.set_postfix_str(job.stage)
        export_module(job.module, job.sample, out / f"{job.stage}.onnx", job.inputs, job.outputs, job.dynamic)
        stages[job.stage] = {"file": f"{job.stage}.onnx", "inputs": job.inputs, "outputs": job.outputs}
        bar.update()
    bar.set_postfix_str("share weights")
    share_weights(*(out / f"{s}.onnx" for s in names.SHARED_WEIGHT_STAGES))
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    bar.update()
    bar.close()
    return stages


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
    write → convert, in a temporary directory renamed into place when complete."""
    config.validate()
    lm = loaded or load_llava(name, dtype=torch.float32)
    plan = plan_export(lm, config)
    jobs, accm = core_jobs(lm, plan), None
    if config.accm:
        if plan.vision_keep is None:
            raise ExportError("--accm needs vision-side pruning to leave discarded tokens")
        comp = load_compensator(lm, config.accm_dir)
        jobs += accm_jobs(comp, plan.n_patches - plan.n_image, Dim("batch"), lm.model.config.vision_config.hidden_size)
        accm = accm_manifest(comp)
    with manifest.staged_directory(Path(output), overwrite) as tmp:
        scratch = tmp if config.precision == "fp32" else tmp / ".fp32"
        scratch.mkdir(exist_ok=True)
        info = bundle_info(lm, plan, config, write_graphs(jobs, scratch, lm.processor.tokenizer, progress), accm)
        manifest.write_manifest(scratch, info)
        if config.precision != "fp32":
            info["precision"] = config.precision
            info["precision_detail"] = convert_precision(scratch, tmp, info["stages"], config, progress)
            lm.processor.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
            shutil.rmtree(scratch)
        info["shared_weights"] = shared_weight_table(tmp, list(names.SHARED_WEIGHT_STAGES))
        info["runtime_requirements"] = requirements(tmp, [s["file"] for s in info["stages"].values()])
        return manifest.write_manifest(tmp, info)


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
        (names.SELECTOR, selector, (torch.ones(2, 3, 9, dtype=torch.long), torch.ones(2, 3, 9, dtype=torch.long)),
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
    }


def convert_precision(fp32_dir: Path, out_dir: Path, stages: dict, config: ExportConfig, progress: bool) -> dict:
    """Convert every stage of the fp32 bundle in ``fp32_dir`` into ``out_dir``; per-stage detail."""
    from ..precision import convert
    from ..precision.data import builtin_samples, directory_samples
    from ..precision.record import record_feeds

    feeds: dict = {}
    if config.precision == "int8":
        samples = (directory_samples(config.calib_dir, config.calib_samples) if config.calib_dir
                   else builtin_samples(config.calib_samples))
        feeds = record_feeds(fp32_dir, samples, progress=progress)
    detail = {}
    for stage in tqdm(stages, desc=f"convert {config.precision}", unit="stage", disable=not progress):
        src, dst = fp32_dir / f"{stage}.onnx", out_dir / f"{stage}.onnx"
        if config.precision == "fp16":
            detail[stage] = convert.to_fp16(src, dst)
        elif config.precision == "int8":
            detail[stage] = convert.to_int8_qdq(src, dst, feeds.get(stage, []))
        elif config.precision == "int4-cpu" and stage in (names.LLM_PREFILL, names.LLM_DECODE):
            detail[stage] = convert.to_int4_matmulnbits(src, dst)
        else:
            detail[stage] = convert.to_int8_dynamic(src, dst)
    share_weights(out_dir / "llm_prefill.onnx", out_dir / "llm_decode.onnx")
    if config.calib_dir:
        detail["calibration"] = {"source": str(config.calib_dir), "samples": config.calib_samples}
    elif config.precision == "int8":
        detail["calibration"] = {"source": "ShapesVQA calib split", "samples": config.calib_samples}
    return detail
