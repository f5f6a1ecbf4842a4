"""Write a LLaVA-1.5-7B-shaped stand-in (random fp16 weights) into the local Hugging Face cache.

The real llava-1.5-7b configuration (CLIP ViT-L/14-336, 24 layers; Vicuna-7B, 32 layers) by
default, saved as llava-1.5-7b-hf's safetensors shards one shard at a time, so that
``--model llava-1.5-7b`` resolves to it exactly as a downloaded checkpoint would. ``--layers N``
makes shallower ones the same way. Peak RSS stays near one shard (5 GB), never an fp32 copy.
``--shard-gb`` sets the shard size.

    python benchmarks/make_standin.py --layers 32            # ~14 GB in $HF_HOME/hub
    python benchmarks/make_standin.py --layers 2 --output work/standin2_fp16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from accm.measure.latency import peak_rss_mb
from accm.models.registry import ALIASES
from accm.models.standin import install_in_hf_cache, write_standin_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (llava-1.5-7b: 32)")
    ap.add_argument("--vision-layers", type=int, default=24, help="CLIP encoder layers (ViT-L/14-336: 24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repo-id", default=ALIASES["llava-1.5-7b"], help="cache entry to write (default: %(default)s)")
    ap.add_argument("--output", help="write to this directory instead of the Hugging Face cache")
    ap.add_argument("--shard-gb", type=float, default=5.0, help="shard size (llava-1.5-7b-hf: about 5 GB)")
    args = ap.parse_args(argv)
    t0, shard = time.time(), int(args.shard_gb * 1e9)
    if args.output:
        path = write_standin_checkpoint(args.output, args.layers, args.vision_layers, args.seed, shard)
    else:
        from huggingface_hub import constants

        staging = Path(tempfile.mkdtemp(dir=constants.HF_HUB_CACHE if Path(constants.HF_HUB_CACHE).is_dir() else None))
        write_standin_checkpoint(staging / "snapshot", args.layers, args.vision_layers, args.seed, shard)
        revision = hashlib.sha1(f"accm-standin-{args.layers}-{args.vision_layers}-{args.seed}".encode()).hexdigest()
        path = install_in_hf_cache(staging / "snapshot", args.repo_id, revision)
        staging.rmdir()
    size = sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
    print(json.dumps({"path": str(path), "decoder_layers": args.layers, "vision_layers": args.vision_layers,
                      "weights_gb": round(size / 1e9, 2), "seconds": round(time.time() - t0, 1),
                      "peak_rss_gb": round(peak_rss_mb() / 1024, 2)}))  # VmHWM: this process's own
    return 0


if __name__ == "__main__":
    sys.exit(main())
