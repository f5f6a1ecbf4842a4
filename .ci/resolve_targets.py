"""Ask pip's resolver whether the runtime (``accm[cpu]``) installs on each deployment target.

Nothing is installed: a wheel of this checkout is built, then ``pip install --dry-run
--only-binary=:all:`` resolves it for each target's Python and platform from the package index.
A target that does not resolve prints pip's reason (the requirement that blocked it) and the
script exits 1.

    python .ci/resolve_targets.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AARCH64 = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"]
X86_64 = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]
TARGETS = {
    "JetPack 6 (Python 3.10, aarch64)": ("3.10", AARCH64),
    "JetPack 7 (Python 3.12, aarch64)": ("3.12", AARCH64),
    "desktop (Python 3.12, x86_64)": ("3.12", X86_64),
}
EXTRA = "cpu"
SHOWN = ("numpy", "onnxruntime", "tokenizers", "pillow", "tqdm")


def resolve(wheel: Path, python: str, platforms: list[str], report: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
           "--report", str(report)]
    for p in platforms:
        cmd += ["--platform", p]
    return subprocess.run(cmd + [f"{wheel}[{EXTRA}]"], capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT), "-w", tmp],
                       check=True, capture_output=True)
        wheel = next(Path(tmp).glob("accm-*.whl"))
        failed = 0
        for name, (python, platforms) in TARGETS.items():
            report = Path(tmp) / "report.json"
            proc = resolve(wheel, python, platforms, report)
            if proc.returncode != 0:
                failed += 1
                reason = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or \
                    proc.stderr.strip().splitlines()[-3:]
                print(f"FAIL {name}: accm[{EXTRA}] does not resolve: {' | '.join(reason)}")
                continue
            chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                      for item in json.loads(report.read_text())["install"]}
            print(f"ok   {name}: " + ", ".join(f"{k} {chosen[k]}" for k in SHOWN if k in chosen))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
