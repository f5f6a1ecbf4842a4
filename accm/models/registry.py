"""Resolving ``--model`` values to a local checkpoint directory, with no network access.

A value is a local directory, ``accm-tiny`` (shipped in the package), an alias
(``llava-1.5-7b``, ``llava-1.5-13b``) or a hub repo id, the last two looked up in the local
Hugging Face cache only. Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..errors import AccmUserError

DEFAULT_MODEL = "accm-tiny"
ALIASES = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
}
TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "accm-tiny"


class ModelNotFound(AccmUserError, LookupError):
    """The model is not on this machine; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str  # what the user typed (or the default)
    path: Path  # a local HF checkpoint directory
    repo_id: str | None = None


def resolve(name: str | None) -> ModelSource:
    name = name or DEFAULT_MODEL
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelNotFound(f"{local} is a directory but has no config.json (not a HF checkpoint)")
        return ModelSource(name, local.resolve())
    if name == DEFAULT_MODEL:
        if not (TINY_DIR / "config.json").exists():
            raise ModelNotFound(
                f"accm-tiny is missing from this installation ({TINY_DIR}); reinstall the package "
                "or rebuild it with `accm-train base`"
            )
        return ModelSource(name, TINY_DIR)
    repo_id = ALIASES.get(name, name)
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ModelNotFound(
            f"unknown model {name!r}: use a checkpoint directory, accm-tiny, "
            f"{', '.join(sorted(ALIASES))}, or a Hugging Face repo id already in the local cache"
        )
    path = _hf_cache_lookup(repo_id)
    if path is None:
        raise ModelNotFound(
            f"model {name!r} ({repo_id}) is not in the local Hugging Face cache and this toolkit never "
            f"downloads; on a machine with network run `hf download {repo_id}` (or "
            f"`huggingface-cli download {repo_id}`) and copy the cache, or pass --model /path/to/checkpoint"
        )
    return ModelSource(name, path, repo_id)


def _hf_cache_lookup(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # the torch-free runtime does not carry huggingface_hub
        return None
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001  (LocalEntryNotFoundError and friends: simply absent)
        return None
    return path if (path / "config.json").exists() else None


def checkpoint_digest(path: Path, recursive: bool = False) -> str:
    """sha256 over a checkpoint's config and weight files (names and contents); ``recursive``:
    every ``.json``/weight file under ``path`` (the ACCM modules' configs and weights)."""
    h = hashlib.sha256()
    if recursive:
        files = sorted(p for p in Path(path).rglob("*")
                       if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    else:
        files = sorted(p for p in Path(path).iterdir()
                       if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    for p in files:
        h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()
