"""LLaVA-1.5 image preprocessing in Pillow + numpy (no torch, no torchvision).

Equal, within float32 rounding, to transformers' ``LlavaImageProcessorPil``/``CLIPImageProcessorPil``:
alpha composited on white, optional square pad with the mean colour (LLaVA-1.5 ``pad`` mode),
bicubic resize of the shortest edge, centre crop, rescale by 1/255, CLIP normalisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

MAX_RESIZE_AREA = 64  # in crop areas: above it, only the crop window is resampled


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    size: int = 336  # shortest edge after resize, and the square crop
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    do_pad: bool = False
    resample: int = int(Image.Resampling.BICUBIC)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ImageSpec:
        return cls(
            size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
            do_pad=bool(d["do_pad"]), resample=int(d["resample"]),
        )

    @classmethod
    def from_hf(cls, image_processor) -> ImageSpec:
        crop = image_processor.crop_size
        size = image_processor.size
        short = size.get("shortest_edge") if isinstance(size, dict) else size.shortest_edge
        crop_h = crop["height"] if isinstance(crop, dict) else crop.height
        if short != crop_h:
            raise ValueError(f"unsupported image processor: shortest edge {short} != crop {crop_h}")
        return cls(
            size=int(short),
            mean=tuple(float(x) for x in image_processor.image_mean),
            std=tuple(float(x) for x in image_processor.image_std),
            do_pad=bool(getattr(image_processor, "do_pad", False) or False),
            resample=int(image_processor.resample),
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white (as transformers does)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _pad_square(rgb: np.ndarray, mean: tuple[float, float, float]) -> np.ndarray:
    h, w, _ = rgb.shape
    if h == w:
        return rgb
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=rgb.dtype)
    out[:] = np.array([int(m * 255) for m in mean], dtype=rgb.dtype)
    if w > h:
        top = (side - h) // 2
        out[top:top + h] = rgb
    else:
        left = (side - w) // 2
        out[:, left:left + w] = rgb
    return out


def preprocess(image: Image.Image, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """One image → float32 ``[3, size, size]`` pixel values."""
    rgb = np.asarray(to_rgb(image))
    if spec.do_pad:
        rgb = _pad_square(rgb, spec.mean)
    h, w, _ = rgb.shape
    if w <= h:
        new_w, new_h = spec.size, int(spec.size * h / w)
    else:
        new_h, new_w = spec.size, int(spec.size * w / h)
    top = (new_h - spec.size) // 2
    left = (new_w - spec.size) // 2
    pil = Image.fromarray(rgb)
    if new_h * new_w > MAX_RESIZE_AREA * spec.size * spec.size:
        # aspect ratios beyond 64:1: resample only the crop window (same filter geometry as
        # resizing everything and cropping) so memory stays bounded. Pillow resamples
        # horizontally first; for tall images its one-call box path rounds differently, so the
        # passes are two calls. Wide ones may differ from transformers by one uint8 step.
        sx, sy = w / new_w, h / new_h
        if w > h:
            box = (left * sx, 0.0, (left + spec.size) * sx, float(h))
            crop = np.asarray(pil.resize((spec.size, spec.size), spec.resample, box=box))
        else:
            narrow = pil.resize((spec.size, h), spec.resample)
            box = (0.0, top * sy, float(spec.size), (top + spec.size) * sy)
            crop = np.asarray(narrow.resize((spec.size, spec.size), spec.resample, box=box))
    else:
        resized = np.asarray(pil.resize((new_w, new_h), spec.resample))
        crop = resized[top:top + spec.size, left:left + spec.size]
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def preprocess_uint8(batch: np.ndarray, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """Already-square ``[B, size, size, 3]`` uint8 images (the rendered pool) → pixel values."""
    if batch.shape[1:] != (spec.size, spec.size, 3) or spec.do_pad:
        return np.stack([preprocess(Image.fromarray(b), spec) for b in batch])
    scaled = (batch.astype(np.float64) * (1 / 255)).astype(np.float32)
    out = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
