"""Soak: N answers in one process, cycling through every bundle kind (fp32, fp16, int8-cpu, ACCM),
recording resident memory over time and checking that no answer ever changes.

The first pass over the prompts fixes each (bundle, prompt)'s answer; every later answer must be
identical. RSS is sampled after every answer; growth is measured from the end of the first pass
(warm-up: sessions, arenas and caches filled) to the end.

    python benchmarks/soak.py --n 1000 --json benchmarks/results/soak.json --plot benchmarks/results/soak.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = {
    "fp32": {"precision": "fp32"},
    "fp16": {"precision": "fp16"},
    "int8-cpu": {"precision": "int8-cpu"},
    "accm": {"precision": "fp32", "accm": True, "vision_keep": 18},
}


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    from accm.cli._common import DEFAULT_VISION_KEEP
    from accm.export.default import default_options, ensure_bundle
    from accm.inputs import load_image
    from accm.measure.latency import machine
    from accm.runtime.pipeline import Pipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default="benchmarks/results/soak.json")
    ap.add_argument("--plot", default="benchmarks/results/soak.png")
    args = ap.parse_args()

    examples = Path(__file__).resolve().parents[1] / "examples"
    rows = [json.loads(line) for line in (examples / "prompts.jsonl").read_text().splitlines() if line.strip()]
    images = {r["image"]: load_image(examples / r["image"]) for r in rows}
    pipes = {}
    for kind, opts in KINDS.items():
        options = default_options(**{"vision_keep": DEFAULT_VISION_KEEP, **opts})
        pipes[kind] = Pipeline(ensure_bundle(args.model, options, progress=False))
    first_pass = len(rows) * len(pipes)
    expected: dict[tuple[str, int], str] = {}
    samples, changed = [], []
    t0 = time.time()
    for i in range(args.n):
        kind = list(pipes)[i % len(pipes)]
        j = (i // len(pipes)) % len(rows)
        row = rows[j]
        answer = pipes[kind].generate([images[row["image"]]], [row["prompt"]], 8)[0].text
        key = (kind, j)
        if key not in expected:
            expected[key] = answer
        elif answer != expected[key]:
            changed.append({"answer": i, "kind": kind, "prompt": row["prompt"], "first": expected[key], "now": answer})
        samples.append({"answer": i + 1, "rss_mb": round(rss_mb(), 2), "elapsed_s": round(time.time() - t0, 2)})
    warm = samples[min(first_pass, len(samples)) - 1]["rss_mb"]
    end = samples[-1]["rss_mb"]
    result = {
        "machine": machine(), "n": args.n, "kinds": list(pipes), "prompts": len(rows),
        "rss_after_first_pass_mb": warm, "rss_end_mb": end, "rss_growth_pct": round(100 * (end - warm) / warm, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "answers_changed": len(changed), "changes": changed[:20], "wall_s": round(time.time() - t0, 1),
        "samples": samples,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([s["answer"] for s in samples], [s["rss_mb"] for s in samples])
        ax.axvline(first_pass, color="grey", lw=0.8, ls="--", label="end of first pass")
        ax.set_xlabel("answers")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"soak: {args.n} answers over {', '.join(pipes)} bundles", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}, indent=1))


if __name__ == "__main__":
    main()
