"""The shape of a bundle manifest: what the runtime reads, with types and ranges.

A bundle is untrusted input (it may be re-signed by whoever made it), so the runtime checks every
field it will use before it opens anything, and a malformed field is one ``BundleError`` line,
not a traceback deep inside a run.
"""

from __future__ import annotations

from .names import CORE_STAGES

REQUIRED_STAGES = CORE_STAGES
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8-cpu", "int4-cpu")


class SchemaError(ValueError):
    pass


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise SchemaError(what)


def _int(value, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
          f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _dict(value, what: str) -> dict:
    _need(isinstance(value, dict), f"{what} must be an object")
    return value


def _str_list(value, what: str) -> list:
    _need(isinstance(value, list) and all(isinstance(v, str) for v in value), f"{what} must be a list of strings")
    return value


def check(m: dict) -> None:
    """Raise ``SchemaError`` naming the first field the runtime cannot use."""
    template = m.get("prompt_template")
    _need(isinstance(template, str) and template.count("{prompt}") == 1 and template.count("<image>") == 1,
          "prompt_template must hold {prompt} and <image> once each")
    _need(isinstance(m.get("tokenizer"), str), "tokenizer must be a file name")
    _need(m.get("precision") in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
    _need(m.get("target", "ort") in ("ort", "trt"), "target must be ort or trt")
    image = _dict(m.get("image"), "image")
    _int(image.get("size"), "image.size", 1, 4096)
    for key in ("mean", "std"):
        v = image.get(key)
        _need(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                         for x in v), f"image.{key} must be three numbers")
    _need(all(x > 0 for x in image["std"]), "image.std must be positive")
    _need(isinstance(image.get("do_pad"), bool), "image.do_pad must be true or false")
    _int(image.get("resample"), "image.resample", 0, 5)
    model = _dict(m.get("model"), "model")
    for key in ("hidden", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab"):
        _int(model.get(key), f"model.{key}", 1, 1 << 24)
    if "max_positions" in model:
        _int(model["max_positions"], "model.max_positions", 1, 1 << 30)
    tokens = _dict(m.get("tokens"), "tokens")
    n_patches = _int(tokens.get("n_patches"), "tokens.n_patches", 1, 1 << 20)
    _int(tokens.get("n_image"), "tokens.n_image", 1, n_patches)
    for key in ("image_token_id", "eos_token_id", "pad_token_id"):
        _int(tokens.get(key), f"tokens.{key}", 0, model["vocab"] - 1)
    if tokens.get("bos_token_id") is not None:
        _int(tokens["bos_token_id"], "tokens.bos_token_id", 0, model["vocab"] - 1)
    pruning = _dict(m.get("pruning"), "pruning")
    layers = model["num_layers"]
    for key in ("layer_groups", "layer_counts"):
        v = pruning.get(key)
        _need(isinstance(v, list) and len(v) == layers, f"pruning.{key} must have one entry per layer")
        for x in v:
            _int(x, f"pruning.{key}[]", 0, n_patches)
    points = _dict(pruning.get("prune_points"), "pruning.prune_points")
    for key in points:
        _need(isinstance(key, str) and key.isdigit() and 0 < int(key) < layers, "pruning.prune_points keys are layers")
    stages = _dict(m.get("stages"), "stages")
    for name in REQUIRED_STAGES:
        _need(name in stages, f"stages.{name} is missing")
    for name, info in stages.items():
        _dict(info, f"stages.{name}")
        _need(isinstance(info.get("file"), str), f"stages.{name}.file must be a file name")
        _str_list(info.get("inputs"), f"stages.{name}.inputs")
        _str_list(info.get("outputs"), f"stages.{name}.outputs")
    if "accm" in m:
        _dict(m["accm"], "accm")
    _need(isinstance(m.get("shared_weights", []), list), "shared_weights must be a list")
