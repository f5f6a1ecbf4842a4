"""A one-layer TensorRT network around the AccmTokenTopK plugin, for the GPU tests (needs
TensorRT, a GPU and the plugin library, built here with TensorRT's headers when missing)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..bundle.names import PLUGIN_NAME, PLUGIN_OUTPUTS, PLUGIN_VERSION
from ..engines.trt import TrtStage, _trt, load_plugin, plugin_library


class PluginUnderTest:
    """A one-layer TensorRT network around the plugin, for the GPU tests."""

    def __init__(self, logger):
        self.logger = logger

    @classmethod
    def build(cls, out_dir: Path) -> PluginUnderTest:
        trt = _trt()
        logger = trt.Logger(trt.Logger.WARNING)
        if plugin_library() is None:
            from .build import build_plugin_library

            include = Path(os.environ.get("TensorRT_ROOT", "/usr")) / "include"
            os.environ["ACCM_TRT_PLUGIN"] = str(build_plugin_library(out_dir, include))
        load_plugin(logger, required=True)
        return cls(logger)

    def run(self, scores: np.ndarray, tokens: np.ndarray, k: int):
        trt = self.trt = _trt()
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        dtype = trt.float16 if scores.dtype == np.float16 else trt.float32
        s = network.add_input("scores", dtype, scores.shape)
        t = network.add_input("tokens", dtype, tokens.shape)
        creator = trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, "")
        fields = trt.PluginFieldCollection([
            trt.PluginField("k", np.array([k], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("emit_discarded", np.array([1], np.int32), trt.PluginFieldType.INT32)])
        plugin = creator.create_plugin("accm_topk", fields, trt.TensorRTPhase.BUILD)
        layer = network.add_plugin_v3([s, t], [], plugin)
        for i, name in enumerate(PLUGIN_OUTPUTS):
            layer.get_output(i).name = name
            network.mark_output(layer.get_output(i))
        config = builder.create_builder_config()
        if dtype == trt.float16:
            config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".plan") as f:
            f.write(bytes(plan))
            f.flush()
            out = TrtStage(Path(f.name)).run({"scores": scores, "tokens": tokens})
        return tuple(out[name] for name in PLUGIN_OUTPUTS)
