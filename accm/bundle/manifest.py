"""The bundle manifest: what ``accm-export`` writes and ``accm-run`` verifies before it loads.

A bundle is one directory: ``manifest.json`` plus the files it lists, each with its size and
sha256. Loading refuses a bundle with a missing, truncated or altered file, an unknown format,
or a newer format version, with one line naming the problem. Torch-free.

A bundle may come from anywhere, so loading treats it as untrusted (docs/DESIGN.md, "Untrusted
bundles"): the manifest's own content is covered by ``manifest_digest``; the directory must hold
exactly the listed files (``engines/`` aside); no listed name, and no graph's external-data
location, may point outside the bundle; the manifest and tokenizer have size caps. All of it is
checked before any session opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import AccmUserError
from ..files import write_text
from . import schema as manifest_schema
from .onnx_refs import MalformedGraph, external_data_locations

FORMAT = "accm-bundle"
#: 2: the manifest carries ``manifest_digest`` (version 1 bundles cannot be checked: re-export)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ENGINES = "engines"
MAX_MANIFEST_BYTES = 8 << 20
MAX_TOKENIZER_BYTES = 64 << 20


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


def current_format(root: Path) -> bool:
    """Whether ``root`` holds a manifest of this toolkit's format version (no other checks)."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text()).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> dict:
    manifest = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = file_entries(root)
    manifest["bundle_digest"] = bundle_digest(manifest["files"])
    manifest["manifest_digest"] = manifest_digest(manifest)
    write_text(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _inside(root: Path, name: str) -> bool:
    """``name`` is a plain relative path that stays inside ``root`` (symlinks resolved)."""
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/") or "\x00" in name:
        return False
    if any(part in ("", ".", "..") for part in name.split("/")):
        return False
    real_root = root.resolve()
    target = (root / name).resolve()
    return target == real_root or real_root in target.parents


def _listed_files(root: Path) -> set[str]:
    """Every file in the bundle directory except the manifest and the engine cache."""
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or rel == ENGINES or rel.startswith(ENGINES + "/"):
            continue
        if path.is_file() or path.is_symlink():
            out.add(rel)
    return out


def check_untrusted(root: Path, manifest: dict) -> None:
    """The rules for a bundle from elsewhere; one ``BundleError`` line for the first broken one."""
    try:
        _check_untrusted(root, manifest)
    except MalformedGraph as e:
        raise BundleError(f"altered bundle: a graph is not a valid ONNX file ({e})") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise BundleError(f"altered bundle: its manifest is malformed ({e.__class__.__name__}: {e})") from None


def _check_untrusted(root: Path, manifest: dict) -> None:
    files = manifest["files"]
    for name in files:
        if not _inside(root, name):
            raise BundleError(f"unsafe bundle: the manifest lists {name!r}, which points outside the bundle")
    extra = sorted(_listed_files(root) - set(files))
    if extra:
        raise BundleError(f"unsafe bundle: {extra[0]!r} is in the bundle but not in its manifest")
    named = [info.get("file") for info in manifest.get("stages", {}).values()] + [manifest.get("tokenizer")]
    for name in named:
        if name not in files:
            raise BundleError(f"altered bundle: {name!r} is used but not listed in the manifest")
    tokenizer = manifest.get("tokenizer")
    if files[tokenizer].get("size", 0) > MAX_TOKENIZER_BYTES:
        raise BundleError(f"unsafe bundle: {tokenizer} is larger than {MAX_TOKENIZER_BYTES >> 20} MB")
    for info in manifest.get("stages", {}).values():
        for location in external_data_locations(root / info["file"]):
            if not _inside(root, location) or location not in files:
                raise BundleError(f"unsafe bundle: {info['file']} reads external data from {location!r}, "
                                  f"outside the bundle's listed files")


def load_manifest(root: str | Path, verify: bool = True) -> dict:
    """Read and check a bundle's manifest (and, with ``verify``, every file's size and hash)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory")
    path = root / MANIFEST
    if not path.exists():
        raise BundleError(f"incomplete bundle: {path} is missing")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"unsafe bundle: {path} is larger than {MAX_MANIFEST_BYTES >> 20} MB")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"altered bundle: {path} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not an accm bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"bundle format version {version} is newer than this toolkit reads "
                          f"({FORMAT_VERSION}); upgrade accm or re-export the bundle")
    if version < FORMAT_VERSION:
        raise BundleError(f"bundle format version {version} predates manifest integrity checks "
                          f"(version {FORMAT_VERSION}); re-export the bundle")
    if manifest.get("manifest_digest") != manifest_digest(manifest):
        raise BundleError(f"altered bundle: {path} was edited after export (its manifest_digest does not match)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or not all(isinstance(e, dict) for e in files.values()):
        raise BundleError(f"altered bundle: {path} lists no files")
    try:
        manifest_schema.check(manifest)
    except manifest_schema.SchemaError as e:
        raise BundleError(f"malformed bundle manifest: {e}") from None
    check_untrusted(root, manifest)
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
