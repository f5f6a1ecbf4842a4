"""accm-bench: accuracy on ShapesVQA, latency sweeps with peers, and a device roofline model."""

from __future__ import annotations

import json
import sys

from ._common import Parser, UserError, add_model_options, number, run_cli


def _accuracy(args) -> int:
    from ..measure.accuracy import BundleAnswerer, TorchAnswerer, evaluate

    if args.bundle is not None:
        if args.random_keep:
            raise UserError("--random-keep is a PyTorch-reference baseline; it cannot run on a bundle")
        answer = BundleAnswerer(args.bundle, args.provider)
    else:
        from ..pruning.schedule import Schedule

        schedule = Schedule.parse(args.schedule)  # a bad spec is refused before the model loads
        if args.caption_mode is not None and not args.accm:
            raise UserError("--caption-mode chooses among ACCM's captions: add --accm (and --vision-keep K)")
        answer = TorchAnswerer(args.model, args.vision_keep, schedule, args.score_layer,
                               random_keep_seed=args.seed if args.random_keep else None, accm=args.accm,
                               accm_dir=args.accm_dir, caption_mode=args.caption_mode or "selected", seed=args.seed)
    result = evaluate(answer, n=args.n, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['model']}  vision_keep={result['vision_keep']}  schedule={result['schedule']}  "
              f"accm={result.get('accm')}  n={result['n']}  backend={result['backend']}")
        blind = result["blind_baselines"]
        names = list(blind)
        print(f"  {'family':10s} {'accuracy':>8s} {'95% interval':>15s}   " + "  ".join(f"{n:>15s}" for n in names))
        rows = [(f, acc, result["per_family_ci95"][f], [blind[n]["per_family"].get(f) for n in names])
                for f, acc in result["per_family"].items()]
        rows.append(("overall", result["accuracy"], result["ci95"], [blind[n]["accuracy"] for n in names]))
        for fam, acc, (lo, hi), base in rows:
            print(f"  {fam:10s} {acc:8.3f}    [{lo:.3f}, {hi:.3f}]   " + "  ".join(f"{b:15.3f}" for b in base))
        print(f"  blind baselines fitted on train-split frequencies; kept tokens on objects: "
              f"{result['kept_on_object']:.3f}")
    return 0


def _keep_list(values: list[str]) -> list[int | None]:
    from ._common import keep_count

    return [keep_count(v) for v in values]


def _latency(args) -> int:
    from ..measure.sweep import latency_sweep, save

    report = latency_sweep(args.model, args.bundle or [], _keep_list(args.vision_keep), args.schedule,
                           args.precision, args.provider, args.warmup, args.repeat, args.max_new_tokens,
                           peers=not args.no_peers and (args.model is not None or not args.bundle),
                           image=args.image, prompt=args.prompt, progress=not args.quiet,
                           share_weights=args.share_weights)
    save(report, args.json, args.csv, args.plot)
    print(f"{'configuration':46s} {'prefill ms':>10s} {'TTFT ms':>9s} {'decode ms/tok':>13s} "
          f"{'RSS MB':>8s} {'FLOPs ratio':>11s} {'speedup':>8s}")
    for r in report["results"]:
        dec = r["decode_ms_per_token"]["median"] if r["decode_ms_per_token"] else float("nan")
        st = r["stages_ms"]
        print(f"{r['name'][:46]:46s} {st['prefill']['median']:10.1f} {st['ttft']['median']:9.1f} {dec:13.2f}"
              f" {r['peak_rss_mb']:8.0f} {r.get('prefill_flops_ratio', float('nan')):11.3f}"
              f" {r.get('prefill_speedup', float('nan')):8.2f}")
    for name, ratio in report["ratios"].items():
        print(f"{name}: TTFT {ratio['ttft_ratio_peer_over_ours']:.2f}x ours, decode "
              f"{ratio['decode_ratio_peer_over_ours'] or float('nan'):.2f}x ours")
    return 0


def _roofline(args) -> int:
    from ..measure.roofline import DEFAULT_BUDGETS, table

    result = table(args.device, DEFAULT_BUDGETS, compute_eff=args.compute_efficiency,
                   memory_eff=args.memory_efficiency)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['kind']}\n{result['device']['name']}: {result['device']['fp16_tflops']} FP16 TFLOPS, "
          f"{result['device']['int8_tops']} INT8 TOPS, {result['device']['bandwidth_gbs']} GB/s "
          f"({result['device']['source']}); efficiency: compute {args.compute_efficiency}, "
          f"memory {args.memory_efficiency}")
    print(f"{'precision':9s} {'vision keep':>11s} {'schedule':>12s} {'TTFT ms':>9s} {'decode tok/s':>12s} bound")
    for r in result["rows"]:
        print(f"{r['precision']:9s} {str(r['vision_keep'] or 576):>11s} {r['schedule']:>12s} {r['ttft_ms']:9.1f} "
              f"{r['decode_tokens_per_s']:12.1f} prefill:{r['prefill_bound']} decode:{r['decode_bound']}")
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    a = sub.add_parser("accuracy", help="exact-match accuracy on ShapesVQA test questions")
    a.add_argument("--bundle", default=None, help="evaluate an exported bundle through the runtime")
    add_model_options(a, default_keep=None)
    a.add_argument("--n", type=number(int, low=1), default=500, help="number of test questions")
    a.add_argument("--seed", type=int, default=0, help="which test questions (and the random-keep draw)")
    a.add_argument("--random-keep", action="store_true", help="keep random patches instead of attention-guided")
    a.add_argument("--accm", action="store_true", help="compensate vision-side pruning with ACCM captions")
    a.add_argument("--accm-dir", default=None, help="trained caption/ and selector/ (default: <model>/accm)")
    a.add_argument("--caption-mode", choices=["selected", "top", "random", "oracle", "none"], default=None,
                   help="with --accm: the selector's caption (default), the best beam (no selector), a random "
                        "candidate, or best-of-M (oracle)")
    a.add_argument("--batch-size", type=number(int, low=1), default=16)
    a.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    a.add_argument("--json", action="store_true")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_accuracy)

    lat = sub.add_parser("latency", help="per-stage latency sweep with peers (each configuration in its own process)")
    lat.add_argument("--bundle", nargs="+", default=None, help="measure these bundles")
    lat.add_argument("--model", default=None, help="export and measure this model (default: accm-tiny)")
    lat.add_argument("--vision-keep", nargs="+", default=["all", "64"], metavar="K", help="sweep: keep counts")
    lat.add_argument("--schedule", nargs="+", default=["none"], metavar="SPEC", help="sweep: LLM-side schedules")
    lat.add_argument("--precision", nargs="+", default=["fp32"], help="sweep: fp32 fp16 int8 int4 int8-cpu int4-cpu")
    lat.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    lat.add_argument("--warmup", type=number(int, low=0), default=2)
    lat.add_argument("--repeat", type=number(int, low=1), default=5)
    lat.add_argument("--max-new-tokens", type=number(int, low=1), default=16, help="decode steps per run (EOS ignored)")
    lat.add_argument("--no-peers", action="store_true", help="skip transformers and PyTorch-reference peers")
    lat.add_argument("--share-weights", action="store_true",
                     help="run bundles as accm-run --share-weights does (fp32 on cpu: one copy of the LLM weights)")
    lat.add_argument("--image", default=None, help="input image (default: a ShapesVQA test scene)")
    lat.add_argument("--prompt", default=None)
    lat.add_argument("--json", default=None, metavar="FILE")
    lat.add_argument("--csv", default=None, metavar="FILE")
    lat.add_argument("--plot", default=None, metavar="FILE.png")
    lat.add_argument("--quiet", action="store_true")
    lat.set_defaults(func=_latency, default_model=None)

    roof = sub.add_parser("roofline", help="predicted llava-1.5-7b TTFT and decode tokens/s on a device (a model)")
    from ..measure.roofline import DEVICES

    roof.add_argument("--device", choices=sorted(DEVICES), required=True)
    roof.add_argument("--compute-efficiency", type=number(float, above=0, high=1), default=1.0,
                      help="fraction of peak FLOPs reached")
    roof.add_argument("--memory-efficiency", type=number(float, above=0, high=1), default=1.0,
                      help="fraction of peak bandwidth reached")
    roof.add_argument("--json", action="store_true")
    roof.set_defaults(func=_roofline)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
