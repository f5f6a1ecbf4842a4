"""accm-serve: an OpenAI-compatible chat-completions server over accm bundles, with dynamic
batching per model, and Ray Serve replicas with --ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ._common import Parser, UserError, add_model_options, bundle_options, number, run_cli


def _check_listen(host: str, port: int) -> None:
    """Bind and release (host, port) before any work, so a port in use or a host that is not this
    machine is one line and exit 2 instead of a server that announces itself and then fails."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port or --host)") \
                from None


def _settings(args):
    from ..serve.app import ServeSettings

    if args.default_max_tokens > args.max_tokens_limit:
        raise UserError(f"--default-max-tokens {args.default_max_tokens} is above --max-tokens-limit "
                        f"{args.max_tokens_limit}")
    if not args.ray or args.address is None:  # a remote Ray cluster listens on its own machines
        _check_listen(args.host, args.port)
    bundles = args.bundle or []
    names = args.name or []
    if len(names) > len(bundles):
        raise UserError("--name names a --bundle: give at most one --name per --bundle")
    if not bundles:
        from ..export.default import ensure_bundle

        default = ensure_bundle(args.model, bundle_options(args), progress=True)
        models = {args.model or "accm-tiny": str(default)}
    else:
        models = {}
        for i, b in enumerate(bundles):
            name = names[i] if i < len(names) else Path(b).resolve().name
            if name in models:
                raise UserError(f"two bundles are named {name!r}: give --name")
            models[name] = b
    from ..bundle.manifest import load_manifest

    for path in models.values():
        load_manifest(path)  # refuse a bad bundle before binding the port
    allow = args.allow_files
    if allow is not None and not Path(allow).is_dir():
        raise UserError(f"--allow-files {allow}: not a directory")
    return ServeSettings(bundles=models, host=args.host, port=args.port, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout_s,
                         max_body_mb=args.max_body_mb, allow_files=allow,
                         api_key=args.api_key or os.environ.get("ACCM_API_KEY") or None,
                         max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
                         threads=args.threads, provider=args.provider)


def _serve(args) -> int:
    settings = _settings(args)
    where = f"http://{settings.host}:{settings.port}"
    if args.ray:
        from ..serve.ray_app import serve_on_ray

        print(f"accm-serve: {', '.join(settings.bundles)} on {where} (Ray Serve, {args.replicas} replicas)",
              flush=True)
        serve_on_ray(settings, args.replicas, args.address, args.cpus_per_replica, args.gpus_per_replica)
        return 0
    import uvicorn

    from ..serve.app import Server, build_app

    server = Server(settings)
    print(f"accm-serve: {', '.join(settings.bundles)} on {where}", flush=True)
    try:
        uvicorn.run(build_app(lambda: server), host=settings.host, port=settings.port, log_level="warning")
    finally:
        server.stop()
    return 0


def build_parser() -> Parser:
    p = Parser(prog="accm-serve", description=__doc__)
    p.add_argument("--bundle", action="append", help="serve this bundle (repeatable); default: accm-tiny's")
    p.add_argument("--name", action="append", help="the model name of the matching --bundle (default: its folder)")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(int, low=1, high=65535), default=8000)
    p.add_argument("--max-batch", type=number(int, low=1), default=8, help="requests per batch")
    p.add_argument("--max-wait-ms", type=number(float, low=0), default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=number(int, low=1), default=64, help="queued requests before 503")
    p.add_argument("--timeout-s", type=number(float, above=0), default=60.0, help="per-request timeout (504)")
    p.add_argument("--max-body-mb", type=number(float, above=0), default=20.0, help="largest request body (413)")
    p.add_argument("--allow-files", default=None, metavar="DIR", help="accept local image paths, only under DIR")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (or set ACCM_API_KEY)")
    p.add_argument("--max-tokens-limit", type=number(int, low=1), default=512)
    p.add_argument("--default-max-tokens", type=number(int, low=1), default=16)
    p.add_argument("--threads", type=number(int, low=1), default=None, help="ONNX Runtime threads per session")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve replicas (extra [ray])")
    p.add_argument("--replicas", type=number(int, low=1), default=2)
    p.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-replica", type=number(float, above=0), default=1.0)
    p.add_argument("--gpus-per-replica", type=number(float, low=0), default=0.0)
    p.set_defaults(func=_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
