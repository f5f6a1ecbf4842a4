"""A latency sweep over keep counts, schedules and precisions, with peers, ratios, CSV and a plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tqdm import tqdm

from ..files import atomic_path, write_text
from ..pruning.flops import dims_from_config, schedule_flops_ratio
from ..pruning.schedule import Schedule
from .latency import machine, run_isolated


def _name(r: dict) -> str:
    if r["kind"] != "bundle":
        sched = Schedule.parse(r.get("schedule") or "none").spec()
        return r["kind"] + ("" if sched == "none" else f" {sched}")
    sched = Schedule.from_json(r["schedule"]).spec() if isinstance(r["schedule"], dict) else r["schedule"]
    keep = r["vision_keep"] or "all"
    return (f"accm {r['precision']} keep={keep} {sched}" + (" +accm" if r.get("accm") else "")
            + (" shared" if r.get("shared_weights") else ""))


def _flops_ratio(config, r: dict) -> float:
    dims = dims_from_config(config)
    n_image = r["vision_keep"] or dims.patches
    n_text = r["prompt_tokens"] - n_image
    sched = Schedule.from_json(r["schedule"]) if isinstance(r["schedule"], dict) else Schedule.parse(r["schedule"])
    return schedule_flops_ratio(dims, sched, n_text, r["vision_keep"])


def latency_sweep(model: str | None, bundles: list[str], keeps: list[int | None], schedules: list[str],
                  precisions: list[str], provider: str = "cpu", warmup: int = 2, repeat: int = 5,
                  new_tokens: int = 16, peers: bool = True, image: str | None = None, prompt: str | None = None,
                  progress: bool = True, share_weights: bool = False) -> dict:
    from transformers import AutoConfig

    from ..bundle.manifest import load_manifest
    from ..export.default import default_options, ensure_bundle
    from ..inputs import check_prompt, load_image
    from ..models.dims import patch_count
    from ..models.registry import resolve

    # what the user named is checked here, once: each measurement runs in a child process whose
    # failure would otherwise surface as a traceback
    for b in bundles:
        load_manifest(b)
    if image is not None:
        load_image(image)
    if prompt is not None:
        check_prompt(prompt)
    common = {"warmup": warmup, "repeat": repeat, "new_tokens": new_tokens, "image": image, "prompt": prompt}
    targets = [("bundle", {"bundle": str(b), "provider": provider, "share_weights": share_weights, **common})
               for b in bundles]
    source = resolve(model) if (model is not None or not bundles) else None
    config = AutoConfig.from_pretrained(source.path) if source else None
    if config is not None:  # every schedule must fit every keep before the first bundle is exported
        for k in keeps:
            for s in schedules:
                Schedule.parse(s).counts_for_input(config.text_config.num_hidden_layers,
                                                   patch_count(config.vision_config), k)
    if model is not None or not bundles:
        configs = [(p, k, s) for p in precisions for k in keeps for s in schedules]
        for p in precisions:  # the full-token baseline of each precision, for speedups
            if (p, None, "none") not in configs:
                configs.insert(0, (p, None, "none"))
        for p, k, s in tqdm(configs, desc="export bundles", unit="bundle", disable=not progress):
            path = ensure_bundle(model, default_options(p, k, s), progress=False)
            targets.append(("bundle", {"bundle": str(path), "provider": provider, "share_weights": share_weights,
                                        **common}))
        if peers:
            fastv = next((s for s in schedules if s.startswith("fastv")), "fastv:2:64")
            for kind, sched in (("hf-eager", "none"), ("hf-sdpa", "none"), ("reference", "none"),
                                ("reference", fastv)):
                targets.append((kind, {"model": model, "schedule": sched, **common}))
    results = []
    for kind, args in tqdm(targets, desc="measure", unit="config", disable=not progress):
        results.append(run_isolated(kind, args))
    for r in results:
        r["name"] = _name(r)
        if r["kind"] == "bundle" and config is not None:
            r["prefill_flops_ratio"] = _flops_ratio(config, r)
    _ratios(results)
    return {"machine": machine(), "model": source.name if source else None,
            "config": {"provider": provider, "warmup": warmup, "repeat": repeat, "new_tokens": new_tokens,
                       "keeps": keeps, "schedules": schedules, "precisions": precisions, "peers": peers,
                       "share_weights": share_weights},
            "results": results, "ratios": _peer_ratios(results)}


def _median(r: dict, stage: str) -> float | None:
    s = r["stages_ms"].get(stage)
    return s["median"] if s else None


def _ratios(results: list[dict]) -> None:
    """Measured prefill speedup against the same precision's full-token bundle."""
    full = {r["precision"]: r for r in results if r["kind"] == "bundle" and r["vision_keep"] is None
            and Schedule.from_json(r["schedule"]).kind == "none" and not r.get("accm")}
    for r in results:
        base = full.get(r["precision"]) if r["kind"] == "bundle" else None
        if base is None:
            continue
        r["prefill_speedup"] = _median(base, "prefill") / _median(r, "prefill")
        r["ttft_speedup"] = _median(base, "ttft") / _median(r, "ttft")
        if "prefill_flops_ratio" in r:
            r["flops_speedup"] = 1.0 / r["prefill_flops_ratio"]
            r["speedup_vs_flops"] = r["prefill_speedup"] / r["flops_speedup"]


def _peer_ratios(results: list[dict]) -> dict:
    ours = next((r for r in results if r["kind"] == "bundle" and r["precision"] == "fp32"
                 and r["vision_keep"] is None and Schedule.from_json(r["schedule"]).kind == "none"), None)
    if ours is None:
        return {}
    out = {}
    for r in results:
        if r["kind"] == "bundle":
            continue
        out[r["name"]] = {
            "ttft_ratio_peer_over_ours": _median(r, "ttft") / _median(ours, "ttft"),
            "decode_ratio_peer_over_ours": (r["decode_ms_per_token"]["median"] / ours["decode_ms_per_token"]["median"]
                                            if r["decode_ms_per_token"] and ours["decode_ms_per_token"] else None),
        }
    return out


CSV_FIELDS = ["name", "kind", "precision", "vision_keep", "prompt_tokens", "vision_ms", "caption_ms", "selection_ms",
              "prefill_ms", "prefill_p90_ms", "ttft_ms", "ttft_p90_ms", "decode_ms_per_token", "decode_tokens_per_s",
              "peak_rss_mb", "prefill_flops_ratio", "flops_speedup", "prefill_speedup", "speedup_vs_flops"]


def write_csv(report: dict, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in report["results"]:
            st = r["stages_ms"]
            w.writerow({
                "name": r["name"], "kind": r["kind"], "precision": r["precision"], "vision_keep": r["vision_keep"],
                "prompt_tokens": r.get("prompt_tokens"),
                "vision_ms": st.get("vision", {}).get("median"), "caption_ms": st.get("caption", {}).get("median"),
                "selection_ms": st.get("selection", {}).get("median"),
                "prefill_ms": st["prefill"]["median"], "prefill_p90_ms": st["prefill"]["p90"],
                "ttft_ms": st["ttft"]["median"], "ttft_p90_ms": st["ttft"]["p90"],
                "decode_ms_per_token": (r["decode_ms_per_token"] or {}).get("median"),
                "decode_tokens_per_s": r["decode_tokens_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                **{k: r.get(k) for k in ("prefill_flops_ratio", "flops_speedup", "prefill_speedup",
                                         "speedup_vs_flops")},
            })


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["kind"] == "bundle" and Schedule.from_json(r["schedule"]).kind == "none"
            and not r.get("accm")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for prec in sorted({r["precision"] for r in rows}):
        sel = sorted((r for r in rows if r["precision"] == prec), key=lambda r: r["vision_keep"] or 576)
        xs = [r["vision_keep"] or 576 for r in sel]
        axes[0].plot(xs, [r["stages_ms"]["prefill"]["median"] for r in sel], "o-", label=f"prefill {prec}")
        axes[0].plot(xs, [r["stages_ms"]["ttft"]["median"] for r in sel], "s--", label=f"TTFT {prec}")
        full = next((r for r in sel if r["vision_keep"] is None), None)
        if full is not None and all("prefill_flops_ratio" in r for r in sel):
            axes[0].plot(xs, [full["stages_ms"]["prefill"]["median"] * r["prefill_flops_ratio"] for r in sel], ":",
                         color="grey", label=f"prefill at the FLOPs ratio ({prec})")
        axes[1].plot(xs, [r["decode_ms_per_token"]["median"] for r in sel], "o-", label=prec)
    axes[0].set_xlabel("image tokens kept (vision side)")
    axes[0].set_ylabel("ms (median)")
    axes[0].set_title("prefill and time to first token")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("image tokens kept (vision side)")
    axes[1].set_ylabel("ms per token (median)")
    axes[1].set_title("decode")
    axes[1].legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"{report.get('model')} on {m['cpu']} ({m['cores']} cores), {report['config']['provider']}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def save(report: dict, json_path: Path | None, csv_path: Path | None, plot_path: Path | None) -> None:
    if json_path:
        write_text(json_path, json.dumps(report, indent=1) + "\n")
    if csv_path:
        write_csv(report, Path(csv_path))
    if plot_path:
        plot(report, Path(plot_path))
