"""The bundle manifest: what ``accm-export`` writes and ``accm-run`` verifies before it loads.

A bundle is one directory: ``manifest.json`` plus the files it lists, each with its size and
sha256. Loading refuses a bundle with a missing, truncated or altered file, an unknown format,
or a newer format version, with one line naming the problem. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import AccmUserError

FORMAT = "accm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(AccmUserError, ValueError):
    """The bundle cannot be used; the message is one line naming the problem."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path) -> dict[str, dict]:
    """Size and sha256 of every file under ``root`` except the manifest (and the engine cache)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or rel.startswith("engines/"):
            continue
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def bundle_digest(files: dict[str, dict]) -> str:
    """A digest of the bundle's content (its files' hashes), for cache keys."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def write_manifest(root: Path, manifest: dict) -> dict:
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = file_entries(root)
    manifest["bundle_digest"] = bundle_digest(manifest["files"])
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(root: str | Path, verify: bool = True) -> dict:
    """Read and check a bundle's manifest (and, with ``verify``, every file's size and hash)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory")
    path = root / MANIFEST
    if not path.exists():
        raise BundleError(f"incomplete bundle: {path} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"altered bundle: {path} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not an accm bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"bundle format version {version} is newer than this toolkit reads "
                          f"({FORMAT_VERSION}); upgrade accm or re-export the bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"altered bundle: {path} lists no files")
    for name, entry in files.items():
        f = root / name
        if not f.is_file():
            raise BundleError(f"incomplete bundle: {name} is missing from {root}")
        if f.stat().st_size != entry.get("size"):
            raise BundleError(f"altered or truncated bundle file: {name} has {f.stat().st_size} bytes, "
                              f"the manifest says {entry.get('size')}")
        if verify and sha256_file(f) != entry.get("sha256"):
            raise BundleError(f"altered bundle file: {name} does not match its sha256 in the manifest")
    if manifest.get("bundle_digest") != bundle_digest(files):
        raise BundleError("altered bundle: the manifest's digest does not match its file list")
    return manifest


@contextmanager
def staged_directory(final: Path, overwrite: bool = False):
    """Yield a temporary directory beside ``final``; rename it into place only on success."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise BundleError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
