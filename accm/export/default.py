"""The default bundle of a model and configuration: found in the cache, or exported on first use.

Importing this module is torch-free; the exporter (and torch) load only when a bundle must be
built, so ``accm-run`` on a cached bundle never imports torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..bundle.cache import bundle_path, export_lock_path
from ..bundle.manifest import current_format
from ..errors import AccmUserError
from ..models.registry import checkpoint_digest, resolve


def default_options(precision: str = "fp32", vision_keep: int | None = None, schedule: str | dict = "none",
                    **overrides) -> dict:
    """The export options of a default bundle (what its cache key covers), with defaults."""
    from ..pruning.schedule import Schedule

    sched = Schedule.from_json(schedule) if isinstance(schedule, dict) else Schedule.parse(schedule)
    options = {"precision": precision, "vision_keep": vision_keep, "schedule": sched.to_json(), "score_layer": None,
               "target": "ort", "accm": False, "accm_dir": None, "calib_dir": None, "calib_samples": 32}
    unknown = set(overrides) - set(options)
    if unknown:
        raise TypeError(f"unknown export options: {sorted(unknown)}")
    return {**options, **overrides}


def default_bundle_path(model: str | None, options: dict) -> Path:
    """The cache directory of a default bundle: keyed by the checkpoint, the ACCM modules it
    embeds (if any) and the options."""
    source = resolve(model)
    digest = checkpoint_digest(source.path)
    if options.get("accm"):  # the bundle embeds the ACCM modules: retrained ones need a new bundle
        accm_dir = Path(options.get("accm_dir") or Path(source.path) / "accm")
        if accm_dir.is_dir():
            digest = hashlib.sha256((digest + checkpoint_digest(accm_dir, recursive=True)).encode()).hexdigest()
    return bundle_path(source, digest, options)


def ensure_bundle(model: str | None, options: dict, progress: bool = True) -> Path:
    path = default_bundle_path(model, options)
    if current_format(path):  # an older format in the cache is exported again
        return path
    try:
        from filelock import FileLock

        from .exporter import ExportConfig, export_bundle
    except ImportError as e:
        raise AccmUserError(f"no cached bundle for this configuration, and exporting one needs the [export] "
                            f"extra ({e.name} is missing): pip install 'accm[export]'") from None
    lock = export_lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    # processes starting together (serve replicas, test workers) export once; the rest wait and reuse it
    with FileLock(str(lock)):
        if not current_format(path):
            export_bundle(model, path, ExportConfig.from_options(options), overwrite=True, progress=progress)
    return path
