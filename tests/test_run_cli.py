"""accm-run / accm-export as users run them: image modes, bad inputs, altered bundles, torch-free.

Tests marked ``runtime`` need only the runtime install and a bundle (``runtime_bundle``), so CI
also runs them in its minimum-versions environment, where torch is absent."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from accm.bundle.manifest import load_manifest
from accm.cli import export as export_cli
from accm.cli import run as run_cli

from .conftest import saved_random_llava  # imports torch only when called


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_random_llava(tmp_path_factory.mktemp("model"), seed=21)


@pytest.fixture(scope="module")
def bundle(runtime_bundle):
    return runtime_bundle


def test_export_cli_writes_a_loadable_bundle(model_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export_cli.main(["--model", str(model_dir), "--output", str(out), "--quiet",
                            "--schedule", "fastv:2:16"]) == 0
    info = json.loads(capsys.readouterr().out)
    manifest = load_manifest(out)
    assert info["bundle"] == str(out) and manifest["pruning"]["vision_keep"] == 64
    assert manifest["pruning"]["layer_counts"] == [64, 64, 16, 16]
    assert set(manifest["files"]) >= {"vision.onnx", "embed.onnx", "llm_prefill.onnx", "llm_decode.onnx",
                                      "tokenizer.json"}


def _run(bundle, image, prompt="what color is the star ?", extra=()):
    return run_cli.main(["--bundle", str(bundle), "--image", str(image), "--prompt", prompt,
                         "--max-new-tokens", "3", *extra])


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("accm-run: error:"), err
    return err


def _png_with_size(path: Path, width: int, height: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def _good_images(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, size=(120, 90, 3), dtype=np.uint8))
    out = {}
    out["rgb.jpg"] = rgb
    out["rgba.png"] = rgb.convert("RGBA")
    out["grey.png"] = rgb.convert("L")
    out["palette.gif"] = rgb.convert("P")
    out["cmyk.jpg"] = rgb.convert("CMYK")
    out["bw.png"] = rgb.convert("1")
    out["la.png"] = rgb.convert("LA")
    out["sixteen.png"] = Image.fromarray(rng.integers(0, 65535, size=(64, 48)).astype(np.uint16))
    out["one_pixel.png"] = Image.new("RGB", (1, 1), (255, 0, 0))
    out["tall.png"] = Image.new("RGB", (3, 900), (0, 0, 255))
    out["wide.png"] = Image.new("RGB", (2000, 2), (0, 255, 0))
    paths = {}
    for name, img in out.items():
        paths[name] = tmp / name
        img.save(paths[name])
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    paths["anim.gif"] = tmp / "anim.gif"
    frames[0].save(paths["anim.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return paths


@pytest.mark.runtime
def test_every_image_mode_is_answered(bundle, tmp_path, capsys):
    for name, path in _good_images(tmp_path).items():
        rc = _run(bundle, path)
        out = capsys.readouterr()
        assert rc == 0, (name, out.err)
        assert out.out.endswith("\n")


@pytest.mark.runtime
def test_json_output_has_counts_and_stage_times(bundle, tmp_path, capsys):
    img = _good_images(tmp_path)["rgb.jpg"]
    assert _run(bundle, img, extra=["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["times_ms"]) >= {"preprocess", "vision", "prefill", "decode_steps", "ttft", "total"}
    assert data["tokens"]["image_tokens_kept"] == 64  # the default: 576 -> 64
    assert data["tokens"]["generated"] >= 1 and data["tokens"]["prompt_tokens"] > 64


def _bad_images(tmp: Path) -> dict[str, Path]:
    ok = tmp / "ok.png"
    Image.new("RGB", (64, 64)).save(ok)
    data = ok.read_bytes()
    paths = {
        "zero.png": b"",
        "truncated.png": data[: len(data) // 2],
        "garbage.jpg": os.urandom(300),
        "text.png": b"this is not an image",
    }
    out = {}
    for name, content in paths.items():
        out[name] = tmp / name
        out[name].write_bytes(content)
    out["bomb.png"] = _png_with_size(tmp / "bomb.png", 40000, 40000)
    out["missing.png"] = tmp / "missing.png"
    return out


@pytest.mark.runtime
@pytest.mark.parametrize("name", ["zero.png", "truncated.png", "garbage.jpg", "text.png", "bomb.png", "missing.png"])
def test_bad_images_are_one_line_exit_2(bundle, tmp_path, capsys, name):
    err = _one_line_error(capsys, _run(bundle, _bad_images(tmp_path)[name]))
    assert "image" in err


@pytest.mark.runtime
@pytest.mark.parametrize("prompt", ["", "   ", "x" * 5000, "what is <image> ?"])
def test_bad_prompts_are_one_line_exit_2(bundle, tmp_path, capsys, prompt):
    img = _good_images(tmp_path)["rgb.jpg"]
    err = _one_line_error(capsys, _run(bundle, img, prompt=prompt))
    assert "prompt" in err


def _copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


@pytest.mark.runtime
@pytest.mark.parametrize("damage", ["missing", "truncated", "altered", "newer", "no_manifest", "bad_json",
                                    "shared_outside", "shared_malformed"])
def test_damaged_bundles_are_refused(bundle, tmp_path, capsys, damage):
    b = _copy(bundle, tmp_path)
    img = _good_images(tmp_path)["rgb.jpg"]
    target = b / "llm_prefill.onnx.data"
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "altered":
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "newer":
        m = json.loads((b / "manifest.json").read_text())
        m["format_version"] = 99
        (b / "manifest.json").write_text(json.dumps(m))
    elif damage.startswith("shared"):
        m = json.loads((b / "manifest.json").read_text())
        if damage == "shared_outside":
            m["shared_weights"][0]["offset"] = target.stat().st_size
        else:
            del m["shared_weights"][0]["names"]
        (b / "manifest.json").write_text(json.dumps(m))
    elif damage == "no_manifest":
        (b / "manifest.json").unlink()
    else:
        (b / "manifest.json").write_text("{not json")
    before = sorted(p.name for p in b.iterdir())
    err = _one_line_error(capsys, _run(b, img, extra=("--share-weights",)))
    assert "bundle" in err or "manifest" in err
    assert sorted(p.name for p in b.iterdir()) == before  # nothing written


def test_export_errors_are_one_line_and_write_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    for args in (["--schedule", "fastv:0:64"], ["--schedule", "layers:576,300"], ["--precision", "int3"],
                 ["--vision-keep", "0"], ["--model", "llava-1.5-13b"]):
        rc = export_cli.main(["--model", str(model_dir), "--output", str(out), "--quiet", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("accm-export: error:"), (args, err)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]  # no temporary left behind


def test_existing_output_needs_overwrite(model_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    rc = export_cli.main(["--model", str(model_dir), "--output", str(existing), "--quiet"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (existing / "keep.txt").read_text() == "mine"  # untouched


def test_run_exports_the_default_bundle_on_first_use(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    img = _good_images(tmp_path)["rgb.jpg"]
    args = ["--model", str(model_dir), "--image", str(img), "--prompt", "what shape is in the top ?",
            "--max-new-tokens", "2", "--json"]
    assert run_cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    bundles = list((tmp_path / "cache" / "bundles").iterdir())
    assert len(bundles) == 1 and first["bundle"] == str(bundles[0])
    assert run_cli.main(args) == 0  # second call reuses the cache
    assert json.loads(capsys.readouterr().out)["answer"] == first["answer"]


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError('blocked in the torch-free runtime test: ' + name)
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.runtime
def test_accm_run_imports_neither_torch_nor_transformers(bundle, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    img = _good_images(tmp_path)["rgb.jpg"]
    code = ("import sys; from accm.cli.run import main; rc = main(sys.argv[1:]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
            "print('IMPORTED', bad); sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])]))
    proc = subprocess.run([sys.executable, "-c", code, "--bundle", str(bundle), "--image", str(img),
                           "--prompt", "is there a red cross ?", "--max-new-tokens", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout


@pytest.mark.runtime
def test_without_any_inference_backend_accm_run_says_so_in_one_line(bundle, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.replace("('torch', 'transformers')", "('onnxruntime',)"))
    img = _good_images(tmp_path)["rgb.jpg"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])]))
    proc = subprocess.run([sys.executable, "-c", "import sys; from accm.cli.run import main; sys.exit(main())",
                           "--bundle", str(bundle), "--image", str(img), "--prompt", "is there a red cross ?"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no inference backend" in proc.stderr and "accm[cpu]" in proc.stderr


@pytest.mark.runtime
def test_console_script_exit_code(bundle, tmp_path):
    exe = Path(sys.executable).parent / "accm-run"
    if not exe.exists():
        pytest.skip("console scripts not installed")
    proc = subprocess.run([str(exe), "--bundle", str(bundle), "--image", str(tmp_path / "nope.png"), "--prompt", "x"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
