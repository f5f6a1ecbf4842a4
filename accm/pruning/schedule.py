"""LLM-side pruning schedules: how many image tokens each decoder layer sees.

``Schedule.none()``: no pruning. ``Schedule.fastv(K, k)``: layers ``0..K-1`` see every image
token, layers ``K..`` see ``k`` (FastV). ``Schedule.per_layer(counts)``: one count per decoder
layer, non-increasing, selection nested (survivors of layer l are chosen among those of l-1).
Counts are capped at the number of image tokens actually present, so one schedule serves full
and vision-pruned inputs; a schedule searched on a vision-pruned input records ``vision_keep``
and runs only on that many tokens. Textual forms: ``none``, ``fastv:K:k``, ``layers:c0,c1,...``,
or the path of a schedule JSON file (format ``accm-schedule``, version 1).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import PruningError
from ..files import write_text

FORMAT = "accm-schedule"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Schedule:
    kind: str  # "none" | "fastv" | "per_layer"
    layer: int = 0  # fastv: first pruned layer K
    keep: int = 0  # fastv: kept image tokens k
    counts: tuple[int, ...] = ()  # per_layer
    meta: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    # constructors -------------------------------------------------------------------------
    @classmethod
    def none(cls) -> Schedule:
        return cls("none")

    @classmethod
    def fastv(cls, layer: int, keep: int) -> Schedule:
        layer, keep = int(layer), int(keep)
        if layer < 1:
            raise PruningError(f"FastV layer K must be >= 1 (layer 0 has no attention before it), got {layer}")
        if keep < 0:
            raise PruningError(f"FastV keep count must be >= 0, got {keep}")
        return cls("fastv", layer=layer, keep=keep)

    @classmethod
    def per_layer(cls, counts, meta: dict | None = None) -> Schedule:
        counts = tuple(int(c) for c in counts)
        if not counts:
            raise PruningError("a per-layer schedule needs one count per decoder layer")
        if any(c < 0 for c in counts):
            raise PruningError(f"per-layer counts must be >= 0: {list(counts)}")
        if any(b > a for a, b in zip(counts, counts[1:])):
            raise PruningError(f"per-layer counts must be non-increasing: {list(counts)}")
        return cls("per_layer", counts=counts, meta=dict(meta or {}))

    # parsing --------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str | Path | Schedule | None) -> Schedule:
        """``none``, ``fastv:K:k``, ``layers:c0,c1,…`` or a schedule JSON file."""
        if spec is None:
            return cls.none()
        if isinstance(spec, Schedule):
            return spec
        text = str(spec).strip()
        if text in ("", "none"):
            return cls.none()
        if text.startswith("fastv:"):
            parts = text.split(":")
            if len(parts) != 3 or not all(p.strip().lstrip("-").isdigit() for p in parts[1:]):
                raise PruningError(f"bad FastV schedule {text!r}; expected fastv:K:k, e.g. fastv:2:64")
            return cls.fastv(int(parts[1]), int(parts[2]))
        if text.startswith("layers:"):
            body = text[len("layers:"):]
            try:
                counts = [int(c) for c in body.split(",")]
            except ValueError:
                raise PruningError(f"bad per-layer schedule {text!r}; expected layers:576,576,288,…") from None
            return cls.per_layer(counts)
        path = Path(text)
        if path.suffix == ".json" or path.exists():
            return cls.load(path)
        raise PruningError(f"unknown schedule {text!r}; use none, fastv:K:k, layers:c0,c1,… or a JSON file")

    @classmethod
    def from_json(cls, data: dict) -> Schedule:
        if data.get("format") != FORMAT:
            raise PruningError(f"not a schedule file (format {data.get('format')!r}, expected {FORMAT!r})")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise PruningError(f"schedule format version {data['version']} is newer than this toolkit "
                             f"reads ({FORMAT_VERSION})")
        kind = data.get("kind")
        meta = {k: v for k, v in data.items() if k not in ("format", "version", "kind", "layer", "keep", "counts")}
        if kind == "none":
            return cls.none()
        if kind == "fastv":
            return dataclasses.replace(cls.fastv(data["layer"], data["keep"]), meta=meta)
        if kind == "per_layer":
            return cls.per_layer(data["counts"], meta=meta)
        raise PruningError(f"unknown schedule kind {kind!r}")

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PruningError(f"schedule file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise PruningError(f"schedule file {path} is not valid JSON: {e}") from None
        return cls.from_json(data)

    def to_json(self) -> dict:
        out = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind}
        if self.kind == "fastv":
            out.update(layer=self.layer, keep=self.keep)
        elif self.kind == "per_layer":
            out["counts"] = list(self.counts)
        out.update(self.meta)
        return out

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def spec(self) -> str:
        """The short textual form (round-trips through ``parse``)."""
        if self.kind == "none":
            return "none"
        if self.kind == "fastv":
            return f"fastv:{self.layer}:{self.keep}"
        return "layers:" + ",".join(str(c) for c in self.counts)

    # application ------------------------------------------------------------------------------
    def counts_for_input(self, num_layers: int, n_patches: int, vision_keep: int | None = None) -> list[int]:
        """``layer_counts`` on an input of the vision tower's top ``vision_keep`` of ``n_patches``
        (None: all): call it before any work, it raises ``PruningError`` if the schedule does not fit."""
        return self.layer_counts(num_layers, n_patches if vision_keep is None else min(vision_keep, n_patches))

    def layer_counts(self, num_layers: int, n_image: int) -> list[int]:
        """Image tokens seen by each decoder layer, given ``n_image`` image tokens at layer 0."""
        if self.kind == "none":
            return [n_image] * num_layers
        if self.kind == "fastv":
            k = min(self.keep, n_image)
            return [n_image if layer < self.layer else k for layer in range(num_layers)]
        if len(self.counts) != num_layers:
            raise PruningError(f"per-layer schedule has {len(self.counts)} counts for a model with "
                             f"{num_layers} decoder layers")
        searched = self.meta.get("vision_keep")  # a schedule searched on a vision-pruned input
        if searched is not None and n_image != searched:
            raise PruningError(f"this schedule was searched on the vision tower's top {searched} tokens, "
                             f"not {n_image}: run it with --vision-keep {searched}")
        counts = [min(c, n_image) for c in self.counts]
        if counts[0] != n_image:
            raise PruningError(f"layer 0 cannot be pruned (no attention before it): the schedule keeps "
                             f"{counts[0]} of {n_image} image tokens there")
        return counts

    def prune_points(self, num_layers: int, n_image: int) -> dict[int, int]:
        """``{layer: count}`` for each layer whose kept set is smaller than the previous layer's."""
        counts = self.layer_counts(num_layers, n_image)
        return {layer: counts[layer] for layer in range(1, num_layers) if counts[layer] < counts[layer - 1]}

    def mean_tokens(self, num_layers: int, n_image: int) -> float:
        """Mean image tokens over layers (the layer-average budget convention)."""
        counts = self.layer_counts(num_layers, n_image)
        return sum(counts) / len(counts)
