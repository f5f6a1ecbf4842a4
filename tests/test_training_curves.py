"""benchmarks/training_curves.py: a continued run's LLM steps follow the first run's last step."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_curves.py"


def _rec(step, count):
    return {"step": step, "level": "full", "full_acc": 0.9, "full_acc_count": count, "passed": []}


def test_a_continued_run_is_appended_after_the_first_runs_steps(tmp_path):
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"recipe": {}, "vision": [], "llm": [_rec(250, 0.4), _rec(500, 0.6)]}))
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipe.json").write_text(json.dumps({"init": "accm-tiny", "llm_lr": 2e-4}))
    (work / "llm_log.jsonl").write_text("\n".join(json.dumps(_rec(s, 0.7)) for s in (250, 500)) + "\n")
    out, plot = tmp_path / "curves.json", tmp_path / "curves.png"
    subprocess.run([sys.executable, str(SCRIPT), "--from-json", str(first), "--continued", str(work),
                    "--json", str(out), "--plot", str(plot)], check=True, capture_output=True)
    curves = json.loads(out.read_text())
    assert [r["step"] for r in curves["llm"]] == [250, 500]
    cont = curves["continued"]
    assert cont["from_step"] == 500 and cont["recipe"]["init"] == "accm-tiny"
    assert [(r["run_step"], r["step"]) for r in cont["llm"]] == [(250, 750), (500, 1000)]
    assert plot.stat().st_size > 0
