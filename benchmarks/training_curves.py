"""accm-tiny's training curves: per-family validation accuracy against steps, from an
``accm-train base`` work directory's JSONL logs, as JSON and a plot.

    python benchmarks/training_curves.py --work work/tiny2 \
        --json benchmarks/results/tiny_training_curves.json --plot accm/assets/accm-tiny/training_curves.png

A run continued with ``accm-train base --init`` logs its LLM steps from 0; ``--continued WORK``
appends them after the first run's last step (the first run's curves may come from the
``--json`` written earlier, ``--from-json``, when its work directory is gone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FAMILIES = ("colour", "shape", "count", "exists")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="work/tiny2")
    ap.add_argument("--json", default="benchmarks/results/tiny_training_curves.json")
    ap.add_argument("--plot", default="accm/assets/accm-tiny/training_curves.png")
    ap.add_argument("--from-json", default=None, help="the first run's curves, written earlier by this script")
    ap.add_argument("--continued", default=None, help="work directory of an `accm-train base --init` run")
    args = ap.parse_args()
    if args.from_json:
        out = json.loads(Path(args.from_json).read_text())
        out.setdefault("continued", None)
    else:
        work = Path(args.work)
        recipe = json.loads((work / "recipe.json").read_text()) if (work / "recipe.json").exists() else None
        out = {"recipe": recipe, "vision": _read(work / "vision_log.jsonl"), "llm": _read(work / "llm_log.jsonl"),
               "continued": None}
    if args.continued:
        work = Path(args.continued)
        first_steps = out["llm"][-1]["step"] if out["llm"] else 0
        out["continued"] = {"from_step": first_steps, "recipe": json.loads((work / "recipe.json").read_text()),
                            "llm": [{**r, "run_step": r["step"], "step": first_steps + r["step"]}
                                    for r in _read(work / "llm_log.jsonl")]}
    vision, llm = out["vision"], out["llm"] + (out["continued"]["llm"] if out["continued"] else [])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    a = axes[0]
    steps = [r["step"] for r in vision]
    for key, label in (("object_colour_acc", "object colour"), ("object_shape_acc", "object shape"),
                       ("patch_cell_acc", "patch cell"), ("cls_top18_on_object", "CLS top-18 on objects")):
        pts = [(s, r[key]) for s, r in zip(steps, vision) if key in r]
        if pts:
            a.plot(*zip(*pts), label=label)
    a.set_title("stage 1: vision tower (val)", fontsize=9)
    a.set_xlabel("step")
    a.set_ylim(0, 1.02)
    a.legend(fontsize=7)
    b, c = axes[1], axes[2]
    for fam in FAMILIES:
        pts = [(r["step"], r[f"view_acc_{fam}"]) for r in llm if f"view_acc_{fam}" in r]
        if pts:
            b.plot(*zip(*pts), label=fam)
        pts = [(r["step"], r[f"full_acc_{fam}"]) for r in llm if f"full_acc_{fam}" in r]
        if pts:
            c.plot(*zip(*pts), label=fam)
    pts = [(r["step"], r["k18_acc"]) for r in llm if "k18_acc" in r]
    if pts:
        c.plot(*zip(*pts), "k--", lw=1, label="all, CLS top-18")
    pts = [(r["step"], r["k18cap_acc"]) for r in llm if "k18cap_acc" in r]
    if pts:
        c.plot(*zip(*pts), "k:", lw=1, label="all, top-18 + caption")
    passed = out["llm"][-1].get("passed", []) if out["llm"] else []
    marks = [(p["passed_at"], f" {p['level']} gate") for p in passed]
    if out["continued"]:
        first = out["continued"]["from_step"]
        marks.append((first, " continued (--init)"))
        cont = out["continued"]["llm"]
        marks += [(p["passed_at"] + first, f" {p['level']} gate") for p in (cont[-1].get("passed", []) if cont else [])]
    for ax in (b, c):
        for step, text in marks:
            ax.axvline(step, color="grey", lw=0.7, ls="--")
            ax.text(step, 0.02, text, fontsize=7, color="grey", rotation=90)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    b.set_title("stage 2: curriculum views (val, their level)", fontsize=9)
    c.set_title("stage 2: whole scenes, 576 tokens (val)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
