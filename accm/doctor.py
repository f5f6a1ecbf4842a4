"""``accm-doctor``: what a bug report needs to know about this machine, and whether each
``--provider`` will work here (and if not, why). Torch-free and safe to run anywhere."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

JETSON_MODEL = Path("/proc/device-tree/model")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False, "why": "not installed (pip install 'accm[cpu]' or 'accm[gpu]')"}
    dist = next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), None)
    return {"installed": True, "version": ort.__version__, "package": dist,
            "providers": list(ort.get_available_providers())}


def _tensorrt() -> dict:
    try:
        import tensorrt as trt
    except ImportError:
        return {"installed": False, "why": "the tensorrt Python module is not importable (JetPack ships it: "
                                           "make the venv with --system-site-packages)"}
    except Exception as e:  # a broken install (missing libnvinfer) raises OSError and friends
        return {"installed": False, "why": f"tensorrt fails to import: {e}"}
    from .engines.trt import plugin_library

    plugin = plugin_library()
    info = {"installed": True, "version": trt.__version__, "plugin_library": str(plugin) if plugin else None}
    if plugin is None:
        info["plugin_loads"] = False
        info["plugin_why"] = "libaccm_token_topk.so not found (build plugins/accm_token_topk or set ACCM_TRT_PLUGIN)"
        return info
    try:
        import ctypes

        ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
        info["plugin_loads"] = True
    except OSError as e:
        info["plugin_loads"], info["plugin_why"] = False, str(e)
    return info


def _device() -> dict:
    from .engines.gpu import cuda_devices

    jetson = None
    if JETSON_MODEL.is_file():
        jetson = JETSON_MODEL.read_bytes().rstrip(b"\x00").decode(errors="replace").strip() or None
    gpus = cuda_devices()
    return {"jetson": jetson, "cuda_devices": gpus,
            "summary": jetson or (", ".join(f"{g['name']} ({g['sm']})" for g in gpus) if gpus else "no NVIDIA GPU")}


def _memory() -> dict:
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                info[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {"total_bytes": info.get("MemTotal"), "available_bytes": info.get("MemAvailable")}


def _cache() -> dict:
    from .bundle.cache import cache_root

    root = cache_root()
    bundles = []
    directory = root / "bundles"
    if directory.is_dir():
        for b in sorted(directory.iterdir()):
            manifest = b / "manifest.json"
            try:
                m = json.loads(manifest.read_text())
                bundles.append({"path": str(b), "model": m["source_model"]["name"], "precision": m["precision"],
                                "vision_keep": m["pruning"]["vision_keep"]})
            except (OSError, ValueError, KeyError, TypeError):
                bundles.append({"path": str(b), "problem": "no readable manifest"})
    return {"directory": str(root), "exists": root.is_dir(), "bundles": bundles}


def _providers(ort_info: dict, trt_info: dict, device: dict) -> dict:
    has_gpu = bool(device["cuda_devices"])
    out = {"cpu": {"works": ort_info["installed"] and "CPUExecutionProvider" in ort_info.get("providers", []),
                   "why": None if ort_info["installed"] else ort_info["why"]}}
    if not ort_info["installed"]:
        cuda_why = ort_info["why"]
    elif "CUDAExecutionProvider" not in ort_info["providers"]:
        cuda_why = "this onnxruntime has no CUDAExecutionProvider (install accm[gpu]: onnxruntime-gpu)"
    elif not has_gpu:
        cuda_why = "no NVIDIA GPU visible through the CUDA driver"
    else:
        cuda_why = None
    out["cuda"] = {"works": cuda_why is None, "why": cuda_why}
    if not trt_info["installed"]:
        trt_why = trt_info["why"]
    elif not has_gpu:
        trt_why = "no NVIDIA GPU visible through the CUDA driver"
    else:
        trt_why = None
    out["tensorrt"] = {"works": trt_why is None, "why": trt_why}
    if trt_why is None and not trt_info.get("plugin_loads"):
        out["tensorrt"]["note"] = ("bundles exported with --target trt need the AccmTokenTopK plugin: "
                                   + trt_info.get("plugin_why", ""))
    return out


def report() -> dict:
    from . import __version__

    ort_info, trt_info, device = _onnxruntime(), _tensorrt(), _device()
    return {
        "accm": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "numpy": _version("numpy"),
        "tokenizers": _version("tokenizers"),
        "pillow": _version("pillow"),
        "torch": _version("torch"),
        "onnxruntime": ort_info,
        "tensorrt": trt_info,
        "device": device,
        "memory": _memory(),
        "cache": _cache(),
        "providers": _providers(ort_info, trt_info, device),
        "env": {k: os.environ[k] for k in ("ACCM_CACHE", "ACCM_TRT_PLUGIN", "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }


def _gb(n) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GB"


def text(r: dict) -> str:
    ort_i, trt_i = r["onnxruntime"], r["tensorrt"]
    lines = [
        f"accm {r['accm']}  python {r['python']}  {r['platform']}",
        f"numpy {r['numpy']}  tokenizers {r['tokenizers']}  pillow {r['pillow']}  torch {r['torch'] or 'absent'}",
        "onnxruntime " + (f"{ort_i['version']} ({ort_i['package']}): {', '.join(ort_i['providers'])}"
                          if ort_i["installed"] else ort_i["why"]),
        "tensorrt " + (f"{trt_i['version']}, plugin: " + ("loads" if trt_i.get("plugin_loads") else
                                                          trt_i.get("plugin_why", "?"))
                       if trt_i["installed"] else trt_i["why"]),
        f"device: {r['device']['summary']}",
        f"memory: {_gb(r['memory']['available_bytes'])} free of {_gb(r['memory']['total_bytes'])}",
        f"cache: {r['cache']['directory']} ({len(r['cache']['bundles'])} bundles)",
    ]
    lines += [f"  {b['path']}: " + (b.get("problem") or f"{b['model']} {b['precision']} keep={b['vision_keep']}")
              for b in r["cache"]["bundles"]]
    for name, p in r["providers"].items():
        lines.append(f"--provider {name}: " + ("works" if p["works"] else f"will not work: {p['why']}")
                     + (f" ({p['note']})" if p.get("note") else ""))
    return "\n".join(lines)
