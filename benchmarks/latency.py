"""Latency sweeps behind the README tables: accm-tiny, and the LLaVA-1.5-7B stand-in (4 layers).

    python benchmarks/latency.py --out benchmarks/results
    python benchmarks/latency.py --full-7b       # the 32-layer stand-in, int4-cpu and int8-cpu

``--full-7b`` needs ``python benchmarks/make_standin.py --layers 32`` first (``--model
llava-1.5-7b`` then resolves to it) and ~25 GB free disk: each precision's three bundles
(keep all / 64 / 18) are exported, measured and deleted before the next.

Calls ``accm-bench latency`` (each configuration in its own process; peers: transformers
generate eager/SDPA and the PyTorch reference). The stand-in (random weights, real shapes) is
built once into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "accm.cli.bench", "latency", *args, "--quiet"], check=True)


def standin(work: Path) -> str:
    """The 4-layer LLaVA-1.5-7B stand-in, built once into ``work``."""
    if not any(work.glob("*.safetensors")):  # a half-written directory has config.json only
        from accm.models.standin import llava_15_standin

        model, proc = llava_15_standin(num_layers=4, seed=0)
        model.save_pretrained(work)
        proc.save_pretrained(work)
    return str(work)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="work/standin4")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--repeat", default="5")
    ap.add_argument("--shared-weights", action="store_true",
                    help="only: the stand-in's fp32 bundles with and without --share-weights (memory vs speed)")
    ap.add_argument("--full-7b", action="store_true",
                    help="only: llava-1.5-7b (the 32-layer stand-in) at int4-cpu and int8-cpu, keep all / 64 / 18")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.full_7b:
        for precision in ("int4-cpu", "int8-cpu"):
            result = out / f"latency_7b_{precision.replace('-', '')}.json"
            bench("--model", "llava-1.5-7b", "--vision-keep", "all", "64", "18", "--precision", precision,
                  "--no-peers", "--repeat", "2", "--warmup", "1", "--max-new-tokens", "8", "--json", str(result))
            for row in json.loads(result.read_text())["results"]:  # 4-7 GB each: make room for the next
                shutil.rmtree(row["bundle"], ignore_errors=True)
        return
    if args.shared_weights:
        model = standin(Path(args.work))
        for mode, extra in (("plain", ()), ("shared", ("--share-weights",))):
            bench("--model", model, "--vision-keep", "all", "64", "--precision", "fp32", "--no-peers",
                  "--repeat", args.repeat, "--warmup", "1", *extra,
                  "--json", str(out / f"latency_standin4_{mode}.json"))
        return
    if not args.skip_tiny:
        bench("--model", "accm-tiny", "--vision-keep", "all", "192", "128", "64", "32", "18",
              "--schedule", "none", "fastv:2:64", "--precision", "fp32", "int8-cpu", "--repeat", args.repeat,
              "--json", str(out / "latency_tiny.json"), "--csv", str(out / "latency_tiny.csv"),
              "--plot", str(out / "latency_tiny.png"))
    if not args.skip_standin:
        bench("--model", standin(Path(args.work)), "--vision-keep", "all", "64", "18",
              "--schedule", "none", "fastv:2:64", "--precision", "fp32", "--repeat", args.repeat, "--warmup", "1",
              "--json", str(out / "latency_standin4.json"), "--csv", str(out / "latency_standin4.csv"),
              "--plot", str(out / "latency_standin4.png"))


if __name__ == "__main__":
    main()
