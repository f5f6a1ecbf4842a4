"""Device time of the AccmTokenTopK CUDA kernels (select + ordered gathers of kept and discarded
rows), with PyTorch on the same GPU as the peer (stable sort, split, sort each part, gather).

    python benchmarks/plugin_kernel.py [--repeats 200] [--json benchmarks/results/plugin_kernel.json]

Needs an NVIDIA GPU and nvcc; the peer needs torch with CUDA. Runs the kernels through the
plain C harness (plugins/accm_token_topk/kernelHarness.cu), not TensorRT: this is the kernels'
own time on the device, excluding host copies, and each configuration's outputs are checked
against ``select_tokens`` and against the peer before it is timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accm.engines.gpu import cuda_device_count  # noqa: E402
from accm.kernels import build as plugin  # noqa: E402
from accm.measure.latency import machine  # noqa: E402
from accm.pruning import select_tokens  # noqa: E402

# (batch, tokens, hidden, kept): LLaVA-1.5's 576 image tokens at CLIP-L width (vision-side site)
# and at the 7B's hidden width (LLM-side site); 2880 = five 576-token AnyRes tiles.
CONFIGS = [(1, 576, 1024, 64), (1, 576, 4096, 64), (1, 576, 4096, 18), (8, 576, 4096, 64),
           (1, 2880, 4096, 320)]


def torch_peer(scores: np.ndarray, tokens: np.ndarray, k: int, repeats: int):
    """The same selection in PyTorch on the GPU: outputs and mean device ms per call."""
    import torch

    s, t = torch.from_numpy(scores).cuda(), torch.from_numpy(tokens).cuda()
    dim = t.shape[-1]

    def call():
        order = torch.sort(s.float(), dim=-1, descending=True, stable=True).indices
        kept_index = order[:, :k].sort(dim=-1).values
        dropped_index = order[:, k:].sort(dim=-1).values
        kept = t.gather(1, kept_index[..., None].expand(-1, -1, dim))
        dropped = t.gather(1, dropped_index[..., None].expand(-1, -1, dim))
        return kept, kept_index, dropped, dropped_index

    out = call()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        call()
    stop.record()
    stop.synchronize()
    return [x.cpu().numpy() for x in out], start.elapsed_time(stop) / repeats


def gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/plugin_kernel.json"))
    args = ap.parse_args()
    if cuda_device_count() == 0 or plugin.nvcc() is None:
        print("plugin_kernel: needs an NVIDIA GPU and nvcc", file=sys.stderr)
        return 2
    try:
        import torch

        has_peer = torch.cuda.is_available()
    except ImportError:
        has_peer = False
    harness = plugin.KernelHarness(plugin.build_kernel_harness(Path(tempfile.mkdtemp())))
    nvcc_version = subprocess.run([plugin.nvcc(), "--version"], capture_output=True, text=True).stdout
    rows = []
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32):
        for batch, n, dim, k in CONFIGS:
            scores = rng.random((batch, n)).astype(dtype)
            scores[:, ::7] = scores[:, :1]  # ties on every row
            tokens = rng.normal(size=(batch, n, dim)).astype(dtype)
            kept, kept_index, dropped, dropped_index, ms = harness.run(scores, tokens, k, repeats=args.repeats)
            expected = select_tokens(scores.astype(np.float32), k)
            row = {"dtype": np.dtype(dtype).name, "batch": batch, "tokens": n, "hidden": dim, "kept": k,
                   "kernel_ms": ms, "matches_select_tokens": bool(np.array_equal(kept_index, expected))}
            if has_peer:
                peer, peer_ms = torch_peer(scores, tokens, k, args.repeats)
                row["torch_ms"] = peer_ms
                row["torch_over_kernel"] = peer_ms / ms
                row["matches_torch"] = all(np.array_equal(a, b) for a, b in
                                           zip((kept, kept_index, dropped, dropped_index), peer))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"benchmark": "plugin_kernel", "repeats": args.repeats, "gpu": gpu_name(),
              "nvcc": nvcc_version.strip().splitlines()[-1] if nvcc_version else None,
              "torch": torch.__version__ if has_peer else None, "machine": machine(),
              "what": "device time of select + gather(kept) + gather(discarded), CUDA events, mean per call "
                      "after one warm-up; host copies excluded", "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return 0 if all(r["matches_select_tokens"] and r.get("matches_torch", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
