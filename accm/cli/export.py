"""accm-export: write a verified bundle of ONNX graphs for a model and pruning configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import Parser, add_model_options, bundle_options, number, run_cli


def _export(args) -> int:
    options = bundle_options(args)
    if args.output is None:
        from ..export.default import ensure_bundle

        path = ensure_bundle(args.model, options, progress=not args.quiet)
    else:
        from ..export.exporter import ExportConfig, export_bundle

        path = Path(args.output)
        export_bundle(args.model, path, ExportConfig.from_options(options), overwrite=args.overwrite,
                      progress=not args.quiet)
    if args.build_engines:
        from ..bundle.manifest import load_manifest
        from ..engines.trt import build_engines

        build_engines(path, load_manifest(path), progress=not args.quiet)
    manifest = json.loads((path / "manifest.json").read_text())
    size = sum(f["size"] for f in manifest["files"].values())
    print(json.dumps({"bundle": str(path), "model": manifest["source_model"]["name"],
                      "precision": manifest["precision"], "pruning": manifest["pruning"],
                      "size_bytes": size}, indent=1))
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-export", description=__doc__)
    add_model_options(p)
    p.add_argument("--output", default=None, help="bundle directory (default: the accm-run cache)")
    p.add_argument("--accm", action="store_true",
                   help="add the ACCM caption model and selector (they compensate vision-side pruning: "
                        "not with --vision-keep all)")
    p.add_argument("--accm-dir", default=None, help="trained caption/ and selector/ (default: <model>/accm)")
    p.add_argument("--target", choices=["ort", "trt"], default="ort",
                   help="ort: standard ONNX ops; trt: AccmTokenTopK plugin nodes at both pruning sites")
    p.add_argument("--build-engines", action="store_true",
                   help="also build TensorRT engines into <bundle>/engines (needs TensorRT and a GPU)")
    p.add_argument("--calib-dir", default=None,
                   help="int8 calibration: a directory of images and prompts.jsonl (default: built-in ShapesVQA)")
    p.add_argument("--calib-samples", type=number(int, low=1), default=32, help="int8 calibration samples (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
