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


def test_default_bundle_of_retrained_accm_modules_is_a_new_cache_entry(tmp_path):
    """A cached ACCM bundle embeds the caption model and selector: retraining them must not
    reuse it; bundles without ACCM keep their key."""
    from accm.export.default import default_bundle_path

    model = tmp_path / "m"
    (model / "accm" / "caption").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    weights = model / "accm" / "caption" / "caption.safetensors"
    weights.write_bytes(b"v1")
    with_accm, plain = default_options("fp32", 18, accm=True), default_options("fp32", 18)
    before = default_bundle_path(str(model), with_accm), default_bundle_path(str(model), plain)
    weights.write_bytes(b"v2")
    after = default_bundle_path(str(model), with_accm), default_bundle_path(str(model), plain)
    assert after[0] != before[0] and after[1] == before[1]


def test_processes_asking_for_the_same_default_bundle_export_it_once(tmp_path, monkeypatch):
    """accm-serve replicas or parallel test workers that start together must not export the same
    cache entry twice (the second would replace the directory under the first's feet)."""
    import threading
    import time

    import accm.export.exporter as exporter
    from accm.bundle.manifest import write_manifest
    from accm.export.default import ensure_bundle

    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    exported = []

    def slow_export(_model, path, _config, overwrite, progress):
        exported.append(path)
        time.sleep(0.3)  # long enough for the other caller to arrive while this one exports
        path.mkdir(parents=True)
        write_manifest(path, {})

    monkeypatch.setattr(exporter, "export_bundle", slow_export)
    paths = []
    callers = [threading.Thread(target=lambda: paths.append(ensure_bundle(str(model), default_options(), False)))
               for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(exported) == 1 and len(paths) == 2 and paths[0] == paths[1] == exported[0]
