"""ACCM training curves: stage 1 (held-out captions that name objects: teacher-forced token
accuracy and greedy exact match, per kept-token budget) and stage 2 (label-free agreement with
the full-token model), from an ``accm-train accm`` work directory's JSONL logs (or copies of them).

    python benchmarks/accm_curves.py --stage1 benchmarks/results/accm_stage1_log.jsonl \
        --stage2 benchmarks/results/accm_stage2_log.jsonl --plot accm/assets/accm-tiny/accm_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training_curves import _read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage1", default="benchmarks/results/accm_stage1_log.jsonl")
    ap.add_argument("--stage2", default="benchmarks/results/accm_stage2_log.jsonl")
    ap.add_argument("--plot", default="accm/assets/accm-tiny/accm_curves.png")
    args = ap.parse_args()
    stage1, stage2 = _read(Path(args.stage1)), _read(Path(args.stage2))
    if not stage1:
        raise SystemExit(f"no stage 1 log at {args.stage1}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    a = axes[0]
    steps = [r["step"] for r in stage1]
    keeps = sorted({int(k.rsplit("_k", 1)[1]) for k in stage1[-1] if k.startswith("caption_acc_named_k")})
    for keep in keeps:
        if f"caption_token_acc_named_k{keep}" in stage1[-1]:
            a.plot(steps, [r.get(f"caption_token_acc_named_k{keep}") for r in stage1], label=f"tokens, keep {keep}")
        a.plot(steps, [r[f"caption_acc_named_k{keep}"] for r in stage1], "--",
               label=f"whole caption (greedy), keep {keep}")
    a.set(title="stage 1: held-out captions that name objects", xlabel="step", ylabel="accuracy", ylim=(0, 1))
    a.legend(fontsize=7)
    a = axes[1]
    if stage2:
        steps = [r["step"] for r in stage2]
        for keep in keeps:
            a.plot(steps, [r[f"agree_k{keep}"] for r in stage2], "o-", label=f"with caption, keep {keep}")
            if f"agree_no_caption_k{keep}" in stage2[0]:
                a.axhline(stage2[0][f"agree_no_caption_k{keep}"], ls=":", color=a.lines[-1].get_color(),
                          label=f"no caption, keep {keep}")
        if "agree" in stage2[0]:  # accm-train ships the val-best evaluation's modules
            shipped = max(stage2, key=lambda r: r["agree"])["step"]
            a.axvline(shipped, color="grey", lw=0.8, label=f"shipped (val-best, step {shipped})")
    a.set(title="stage 2: agreement with the full-token model (val)", xlabel="step", ylim=(0, 1))
    a.legend(fontsize=7)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
