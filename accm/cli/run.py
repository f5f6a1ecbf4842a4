"""accm-run: answer a question about an image from a bundle (torch-free runtime)."""

from __future__ import annotations

import json
import sys

from ._common import Parser, UserError, add_model_options, bundle_options, number, run_cli


def _run(args) -> int:
    from ..inputs import check_prompt, load_image
    from ..runtime.pipeline import Pipeline

    check_prompt(args.prompt)
    image = load_image(args.image)
    if args.provider == "tensorrt":
        from ..engines.gpu import gpu_available

        if not gpu_available():
            raise UserError("--provider tensorrt needs TensorRT and an NVIDIA GPU; none was found on this machine")
        # engines are built on first use into <bundle>/engines/ (see accm.engines.trt)
    if args.bundle is None:
        from ..export.default import ensure_bundle

        bundle = ensure_bundle(args.model, bundle_options(args), progress=not args.json)
    else:
        bundle = args.bundle
    pipe = Pipeline(bundle, provider=args.provider, share_weights=args.share_weights)
    if args.json:
        ans = pipe.generate([image], [args.prompt], args.max_new_tokens)[0]
        print(json.dumps({"answer": ans.text, "caption": ans.caption, "tokens": ans.counts,
                          "times_ms": ans.timings_ms,
                          "bundle": str(bundle), "provider": args.provider, "shared_weights": pipe.shared_weights,
                          "pruning": {k: pipe.manifest["pruning"][k] for k in ("vision_keep", "schedule")}},
                         indent=1))
        return 0
    printed = ""
    ids: list[int] = []
    eos = pipe.tokens["eos_token_id"]

    def stream(_row: int, token: int) -> None:
        nonlocal printed
        if token == eos:
            return
        ids.append(token)
        text = pipe.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text

    pipe.generate([image], [args.prompt], args.max_new_tokens, on_token=stream)
    sys.stdout.write("\n")
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-run", description=__doc__)
    p.add_argument("--bundle", default=None, help="bundle directory (default: accm-tiny's, exported on first use)")
    add_model_options(p)
    p.add_argument("--image", required=True, help="image file (any mode Pillow reads)")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--max-new-tokens", type=number(int, low=1), default=32)
    p.add_argument("--json", action="store_true", help="print answer, token counts and per-stage times as JSON")
    p.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    p.add_argument("--accm", action="store_true",
                   help="default bundle with ACCM compensation of the vision-side pruning (not with --vision-keep all)")
    p.add_argument("--share-weights", action="store_true",
                   help="map the LLM weights once for prefill and decode: fp32 bundles on the cpu provider "
                        "(~40%% less memory, ~10%% slower prefill); no effect otherwise")
    p.set_defaults(func=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
