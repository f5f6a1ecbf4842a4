"""What every console script shares: argument groups, and user errors as one line + exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import AccmUserError
from ..files import ENVIRONMENT_EXIT, describe

DEFAULT_VISION_KEEP = 64


class UserError(AccmUserError):
    """A problem the user caused and can fix (raised by the CLI layer itself)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def keep_count(value: str) -> int | None:
    if value.lower() in ("all", "none", "full"):
        return None
    try:
        int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count or 'all', got {value!r}") from None
    return number(int, low=1)(value)


def number(kind: type = int, low: float | None = None, high: float | None = None, above: float | None = None):
    """An argparse type: a ``kind`` value within bounds (``above``: strictly greater), so a count
    of 0, a negative tolerance or a port past 65535 is one line and exit 2, not a hang or a NaN."""
    bounds = [f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {high:g}" if high is not None else ""]
    wanted = " and ".join(b for b in bounds if b)

    def parse(value: str):
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if x != x or (low is not None and x < low) or (above is not None and x <= above) \
                or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return x

    return parse


def add_model_options(p: argparse.ArgumentParser, default_keep: int | None = DEFAULT_VISION_KEEP) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory, accm-tiny (default), llava-1.5-7b, llava-1.5-13b or a cached repo id")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (default), fp16, int8 (explicit Q/DQ for TensorRT), int4 (4-bit LLM weights as "
                        "blocked Q/DQ for TensorRT), int8-cpu (dynamic, fast on CPU) or int4-cpu (4-bit LLM "
                        "weights, ONNX Runtime's MatMulNBits)")
    p.add_argument("--vision-keep", type=keep_count, default=default_keep, metavar="K",
                   help=f"image tokens kept by vision-side pruning (default {default_keep}; 'all' keeps 576)")
    p.add_argument("--schedule", default="none", metavar="SPEC|FILE",
                   help="LLM-side schedule: none, fastv:K:k, layers:c0,c1,… or a schedule JSON file")
    p.add_argument("--score-layer", type=int, default=None, metavar="L",
                   help="CLIP layer whose CLS attention ranks patches (default: the last)")


def bundle_options(args) -> dict:
    """The export options of a default bundle, as stored in its cache key."""
    from ..pruning.schedule import Schedule

    try:
        schedule = Schedule.parse(args.schedule)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {"precision": args.precision, "vision_keep": args.vision_keep, "schedule": schedule.to_json(),
            "score_layer": args.score_layer, "target": getattr(args, "target", "ort"),
            "accm": getattr(args, "accm", False), "accm_dir": getattr(args, "accm_dir", None),
            "calib_dir": getattr(args, "calib_dir", None), "calib_samples": getattr(args, "calib_samples", 32)}


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, one line already printed)
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except AccmUserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # disk full, a read-only or unwritable destination, a failing device: writers leave
        # nothing half-written (files.py, manifest.staged_directory); inputs the user named are
        # checked before any work and raise AccmUserError instead
        print(f"{parser.prog}: error: {describe(e)} (check free space and permissions)", file=sys.stderr)
        return ENVIRONMENT_EXIT
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
