"""ExportConfig round-trips through the options a default bundle's cache key holds."""

from accm.export.default import default_options
from accm.export.exporter import ExportConfig
from accm.pruning.schedule import Schedule


def test_export_config_from_options_and_back():
    options = default_options("int8", 18, "fastv:2:9", accm=True, calib_samples=12)
    config = ExportConfig.from_options(options)
    assert config.precision == "int8" and config.vision_keep == 18 and config.accm and config.calib_samples == 12
    assert config.schedule == Schedule.parse("fastv:2:9")
    assert config.options() == options
    assert ExportConfig.from_options(config.options()) == config
