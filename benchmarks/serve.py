"""accm-serve throughput and latency: requests per second and p50/p95 latency at several
concurrencies, with dynamic batching and without it (--max-batch 1), and on Ray Serve with 1 and
2 replicas. Each configuration is its own server process on loopback; clients are threads
posting the example prompts round-robin (base64 PNGs, max_tokens 8).

    python benchmarks/serve.py --json benchmarks/results/serve.json --plot benchmarks/results/serve.png
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: str, extra: list[str]):
    import httpx2 as httpx

    port = _free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "accm.cli.serve", "--bundle", bundle, "--name", "tiny",
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(960):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.25)
    raise RuntimeError("server did not start")


def stop(proc) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def examples() -> list[dict]:
    """The README's example prompts: {image, prompt} per line."""
    return [json.loads(line) for line in (ROOT / "examples" / "prompts.jsonl").read_text().splitlines() if line]


def load(base: str, concurrency: int, n: int) -> dict:
    import httpx2 as httpx
    import numpy as np

    rows = examples()
    uris = {r["image"]: "data:image/png;base64," + base64.b64encode((ROOT / "examples" / r["image"]).read_bytes())
            .decode() for r in rows}

    def ask(i):
        row = rows[i % len(rows)]
        body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uris[row["image"]]}}, {"type": "text", "text": row["prompt"]}]}]}
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300)
        return time.perf_counter() - t0, r.status_code

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, range(2 * concurrency)))  # warm-up
        t0 = time.perf_counter()
        results = list(pool.map(ask, range(n)))
        wall = time.perf_counter() - t0
    lat = np.array([r[0] for r in results]) * 1000
    return {"concurrency": concurrency, "requests": n, "ok": sum(r[1] == 200 for r in results),
            "rps": round(n / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1)}


def stage_scaling(bundle: str, batch: int, reps: int = 5) -> dict:
    """Per-request ms of each pipeline stage at batch 1 and at ``batch`` (no server, one thread):
    the ceiling on what dynamic batching can gain. A stage whose per-request cost does not fall
    with the batch (compute-bound on this machine) caps the speed-up whatever the server does."""
    import numpy as np

    from accm.inputs import load_image
    from accm.runtime.pipeline import Pipeline

    rows = examples()
    images = [load_image(ROOT / "examples" / r["image"]) for r in rows]
    pipe = Pipeline(Path(bundle), threads=1)
    out = {}
    for b in (1, batch):
        pick = [i % len(rows) for i in range(b)]
        runs = []
        for _ in range(reps + 1):  # the first is warm-up
            t = pipe.generate([images[i] for i in pick], [rows[i]["prompt"] for i in pick], 8)[0].timings_ms
            runs.append({"preprocess": t["preprocess"], "vision": t["vision"], "prefill": t["prefill"],
                         "decode": sum(t["decode_steps"]), "total": t["total"]})
        out[f"batch_{b}"] = {k: round(float(np.median([r[k] for r in runs[1:]])) / b, 2) for k in runs[1]}
    return {"ms_per_request": out,
            "ceiling_rps_ratio": round(out["batch_1"]["total"] / out[f"batch_{batch}"]["total"], 2)}


def main() -> None:
    from accm.export.default import default_options, ensure_bundle
    from accm.measure.latency import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None, help="default: accm-tiny, vision keep 64, fp32")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", default="benchmarks/results/serve.json")
    ap.add_argument("--plot", default="benchmarks/results/serve.png")
    args = ap.parse_args()
    bundle = args.bundle or str(ensure_bundle(None, default_options(vision_keep=64), progress=False))
    configs = {"batching (max-batch 8)": ["--max-batch", "8", "--max-wait-ms", "5", "--threads", "1"],
               "no batching (max-batch 1)": ["--max-batch", "1", "--threads", "1"]}
    if not args.no_ray:
        for n in (1, 2):
            configs[f"Ray Serve, {n} replica{'s' if n > 1 else ''}"] = [
                "--ray", "--replicas", str(n), "--cpus-per-replica", "0.5", "--max-batch", "8", "--max-wait-ms", "5",
                "--threads", "1"]
    scaling = stage_scaling(bundle, 8)
    print(json.dumps({"pipeline_batch_scaling": scaling}), flush=True)
    rows = []
    for name, extra in configs.items():
        proc, base = start(bundle, extra)
        try:
            for c in args.concurrency:
                res = load(base, c, max(args.requests, 4 * c))
                rows.append({"config": name, **res})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop(proc)
    by = {(r["config"], r["concurrency"]): r for r in rows}
    c8 = 8 if 8 in args.concurrency else max(args.concurrency)
    ratio = by[("batching (max-batch 8)", c8)]["rps"] / by[("no batching (max-batch 1)", c8)]["rps"]
    out = {"machine": machine(), "bundle": bundle, "requests_per_point": args.requests,
           "batching_speedup_at_concurrency": {"concurrency": c8, "rps_ratio": round(ratio, 2)},
           "pipeline_batch_scaling": scaling, "results": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        for name in configs:
            pts = [r for r in rows if r["config"] == name]
            a.plot([p["concurrency"] for p in pts], [p["rps"] for p in pts], marker="o", label=name)
            b.plot([p["concurrency"] for p in pts], [p["p95_ms"] for p in pts], marker="o", label=name)
        a.set_xlabel("concurrent clients")
        a.set_ylabel("requests / s")
        b.set_xlabel("concurrent clients")
        b.set_ylabel("p95 latency (ms)")
        a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    print(json.dumps(out["batching_speedup_at_concurrency"]))


if __name__ == "__main__":
    main()
