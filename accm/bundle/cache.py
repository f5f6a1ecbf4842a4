"""Where default bundles live: one directory per (model digest, precision, pruning config)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("ACCM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "accm"


def bundle_path(source, digest: str, config: dict) -> Path:
    """The cache directory of the bundle of ``source`` (a ``models.registry.ModelSource``) for
    ``config`` (a JSON-able dict of export options)."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in source.name)[-40:]
    return cache_root() / "bundles" / f"{safe}-{digest[:12]}-{key}"


def export_lock_path(bundle: Path) -> Path:
    """The lock that processes exporting the same default bundle take turns on: kept out of
    ``bundles/`` so that directory holds only bundles."""
    return cache_root() / "locks" / f"{bundle.name}.lock"
