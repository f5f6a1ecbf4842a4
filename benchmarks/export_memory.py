"""Peak RSS of exporting the LLaVA-1.5-7B stand-in at several decoder depths, extrapolated to 32.

Each step runs in its own process (peak RSS = VmHWM of that process):
  1. build the stand-in with L decoder layers (random weights) and save it;
  2. load it as accm-export does (weights only) — the floor any exporter pays;
  3. accm-export it (fp32, vision keep 64, schedule fastv:2:64).
A linear fit of peak RSS against L gives the 32-layer (llava-1.5-7b) estimate.

    python benchmarks/export_memory.py --layers 2 4 8 --json benchmarks/results/export_memory.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUILD = """
import sys
from accm.models.standin import llava_15_standin
m, p = llava_15_standin(num_layers=int(sys.argv[1]), seed=0)
m.save_pretrained(sys.argv[2]); p.save_pretrained(sys.argv[2])
"""
LOAD = """
import sys
from accm.models.loading import load_llava
load_llava(sys.argv[1])
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""
EXPORT = """
import sys
from accm.cli.export import main
rc = main(["--model", sys.argv[1], "--output", sys.argv[2], "--vision-keep", "64", "--schedule", "fastv:2:64",
           "--quiet"])
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
sys.exit(rc)
"""


def _run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--json", default="benchmarks/results/export_memory.json")
    ap.add_argument("--workdir", default=None, help="scratch directory (needs ~2.5x the model size)")
    args = ap.parse_args()
    rows = []
    for layers in args.layers:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            model_dir, bundle = Path(tmp) / "model", Path(tmp) / "bundle"
            _run(BUILD, str(layers), str(model_dir))
            weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
            load_kb = int(_run(LOAD, str(model_dir)))
            t0 = time.time()
            export_kb = int(_run(EXPORT, str(model_dir), str(bundle)))
            seconds = time.time() - t0
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            rows.append({"decoder_layers": layers, "weights_gb": weights / 1e9, "load_peak_rss_gb": load_kb / 2**20,
                         "export_peak_rss_gb": export_kb / 2**20, "export_seconds": round(seconds, 1),
                         "bundle_gb": size / 1e9})
            print(json.dumps(rows[-1]))
            shutil.rmtree(tmp, ignore_errors=True)
    x = np.array([r["decoder_layers"] for r in rows], float)
    fits = {}
    for key in ("weights_gb", "load_peak_rss_gb", "export_peak_rss_gb"):
        slope, intercept = np.polyfit(x, [r[key] for r in rows], 1)
        fits[key] = {"per_layer": slope, "intercept": intercept, "at_32_layers": slope * 32 + intercept}
    result = {"benchmark": "export peak RSS, LLaVA-1.5-7B stand-in (random weights), fp32, accm-export",
              "rows": rows, "linear_fit": fits,
              "note": "32 layers = llava-1.5-7b's depth; fp32 weights alone are ~28 GB there"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(fits, indent=1))


if __name__ == "__main__":
    main()
