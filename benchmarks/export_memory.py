"""Peak memory of ``accm-export`` per precision, measured through the whole export (not extrapolated).

Each precision runs ``accm-export`` in its own process. Every 0.2 s the sampler sums the resident
memory (VmRSS) of that process and its children and notes the export's last progress line, so
the peak comes with the stage it happened in. Also recorded: wall time, bundle size and the
LLM weights' size.

The 7B geometry needs the stand-in in the Hugging Face cache first:

    python benchmarks/make_standin.py --layers 32
    python benchmarks/export_memory.py --model llava-1.5-7b --precision fp16 int8-cpu int4-cpu \\
        --workdir /work/big --json benchmarks/results/export_memory_7b.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from accm.bundle.schema import PRECISIONS

PROGRESS_SPLIT = re.compile(r"[\r\n]+")
PROGRESS_LINE = re.compile(r"^[\w ]+:\s+\d+%\|")  # a tqdm bar: "export:  50%|█████ | 2/4 [..., llm_prefill]"


def _tree_rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants (kB); 0 for processes that are gone."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS")), 0)
        except OSError:
            pass
    return total


TRT_CHECK = """
import json, sys
from pathlib import Path
from accm.bundle.manifest import load_manifest
from accm.engines.profiles import Limits, stage_profiles
from accm.engines.trt_rtx_check import check_stage
root, stage, build = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "build"
m = load_manifest(root, verify=False)
r = check_stage(root / m["stages"][stage]["file"], stage_profiles(m, Limits())[stage], build)
print(json.dumps({"parsed": r.parsed, "built": r.built if build else None, "error": r.error[:200]}))
"""
BUILD_LIMIT_BYTES = 2 << 30  # larger graphs are only parsed: building a 32-layer decoder needs > 24 GB here


def trt_check(bundle: Path) -> dict:
    """TensorRT-RTX (a CPU-side proxy for TensorRT) per stage, each in its own process: build
    the small stages, parse the large ones; a killed check says so."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for stage, info in manifest["stages"].items():
        size = sum(p.stat().st_size for p in bundle.glob(info["file"] + "*"))
        mode = "build" if size < BUILD_LIMIT_BYTES else "parse"
        proc = subprocess.run([sys.executable, "-c", TRT_CHECK, str(bundle), stage, mode], capture_output=True,
                              text=True)
        out[stage] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                      else {"failed": f"exit status {proc.returncode}"})
        out[stage]["mode"] = mode
    return out


def measure(model: str, precision: str, output: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "accm.cli.export", "--model", model, "--precision", precision,
           "--output", str(output), "--overwrite", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    state = {"last": "start", "tail": ""}

    def read_progress():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            text = chunk.decode(errors="replace")
            state["tail"] = (state["tail"] + text)[-4000:]
            lines = [x.strip() for x in PROGRESS_SPLIT.split(text) if PROGRESS_LINE.match(x.strip())]
            if lines:
                state["last"] = lines[-1][:120]

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    peak_kb, peak_at, peak_phase, samples = 0, 0.0, "", []
    while proc.poll() is None:
        kb = _tree_rss_kb(proc.pid)
        t = time.time() - t0
        samples.append((round(t, 1), round(kb / 2**20, 3)))
        if kb > peak_kb:
            peak_kb, peak_at, peak_phase = kb, t, state["last"]
        time.sleep(0.2)
    status = proc.returncode
    reader.join(timeout=5)
    seconds = time.time() - t0
    if status != 0:  # e.g. killed for memory: the peak and where it was are the measurement
        return {"precision": precision, "failed": f"exit status {status}", "peak_rss_gb": round(peak_kb / 2**20, 2),
                "peak_at_s": round(peak_at, 1), "peak_during": peak_phase, "seconds": round(seconds, 1),
                "error_tail": state["tail"][-600:], "rss_samples_gb": samples[:: max(1, len(samples) // 400)]}
    files = [p for p in output.rglob("*") if p.is_file()]
    manifest = json.loads((output / "manifest.json").read_text())
    llm = {p.name: p.stat().st_size for p in files if p.name.startswith("llm_") and p.name.endswith(".data")}
    return {"precision": precision, "peak_rss_gb": round(peak_kb / 2**20, 2), "peak_at_s": round(peak_at, 1),
            "peak_during": peak_phase, "seconds": round(seconds, 1),
            "bundle_gb": round(sum(p.stat().st_size for p in files) / 1e9, 2),
            "llm_weights_gb": round(sum(llm.values()) / 1e9, 2),
            "precision_methods": sorted({d.get("method", "") for d in manifest.get("precision_detail", {}).values()
                                         if isinstance(d, dict) and d.get("method")}),
            "rss_samples_gb": samples[:: max(1, len(samples) // 400)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llava-1.5-7b")
    ap.add_argument("--precision", nargs="+", default=["fp16", "int8-cpu", "int4-cpu"], choices=PRECISIONS)
    ap.add_argument("--workdir", default="/tmp", help="where bundles are written (a 7B fp16 needs ~30 GB free)")
    ap.add_argument("--keep", action="store_true", help="keep the bundles (as <workdir>/<precision>)")
    ap.add_argument("--export-args", default="", help="extra accm-export arguments, e.g. '--vision-keep 64'")
    ap.add_argument("--json", default="benchmarks/results/export_memory_7b.json")
    ap.add_argument("--append", action="store_true", help="keep the other precisions' rows already in --json")
    ap.add_argument("--trt-check", action="store_true",
                    help="also parse (large graphs) or build (small ones) every stage with TensorRT-RTX")
    args = ap.parse_args()

    from accm.measure.latency import machine
    from accm.models.registry import resolve

    source = resolve(args.model)
    config = json.loads((source.path / "config.json").read_text())
    weights = sum(p.stat().st_size for p in source.path.glob("*.safetensors"))
    rows = []
    for precision in args.precision:
        out = Path(args.workdir) / precision
        row = measure(args.model, precision, out, args.export_args.split())
        row["export_args"] = args.export_args
        if args.trt_check and not row.get("failed") and precision not in ("int8-cpu", "int4-cpu"):
            row["tensorrt_rtx"] = trt_check(out)
        print(json.dumps({k: v for k, v in row.items() if k != "rss_samples_gb"}), flush=True)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.append and Path(args.json).exists():
        done = {r["precision"] for r in rows}
        rows = [r for r in json.loads(Path(args.json).read_text())["rows"] if r["precision"] not in done] + rows
    result = {
        "benchmark": "accm-export peak RSS per precision (process tree, sampled every 0.2 s), wall time, bundle size",
        "model": args.model, "checkpoint": str(source.path),
        "decoder_layers": config["text_config"]["num_hidden_layers"],
        "vision_layers": config["vision_config"]["num_hidden_layers"],
        "checkpoint_gb": round(weights / 1e9, 2), "checkpoint_dtype": config.get("dtype", config.get("torch_dtype")),
        "export_args": args.export_args,
        "machine": machine(),
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
