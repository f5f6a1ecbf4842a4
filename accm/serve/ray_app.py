"""Scale-out on Ray Serve: the same FastAPI app behind Ray's HTTP proxy, one ``Server`` (every
bundle, its own batching workers and metrics) per replica.

Each replica is its own process: it loads the bundles once and holds them (an accm-tiny fp32
bundle is about 15 MB of weights plus ONNX Runtime's arenas; a 7B int8 bundle several GB).
``--address`` joins an existing cluster; without it a local one is started.
"""

from __future__ import annotations

from .app import Server, ServeSettings, build_app

_SERVER: list[Server] = []


def current_server() -> Server:
    """This replica's Server. Module functions travel to replicas by reference (cloudpickle copies
    the globals of functions it ships by value, such as the deployment class defined below)."""
    return _SERVER[0]


def start_server(settings: ServeSettings) -> None:
    _SERVER[:] = [Server(settings)]


def serve_on_ray(settings: ServeSettings, replicas: int = 2, address: str | None = None,
                 cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, blocking: bool = True):
    import ray
    from ray import serve

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    app = build_app(current_server)

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica,
                                                                "num_gpus": gpus_per_replica})
    @serve.ingress(app)
    class AccmReplica:
        def __init__(self, settings: ServeSettings):
            start_server(settings)

    serve.start(http_options={"host": settings.host, "port": settings.port})
    if not blocking:
        return serve.run(AccmReplica.bind(settings), name="accm", route_prefix="/", blocking=False)
    import signal

    def stop(*_):  # SIGTERM ends the process like Ctrl-C, so replicas and a local cluster are torn down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.run(AccmReplica.bind(settings), name="accm", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
