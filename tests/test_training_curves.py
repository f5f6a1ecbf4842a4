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


def test_accm_curves_plot_both_stages_from_the_jsonl_logs(tmp_path):
    script = SCRIPT.with_name("accm_curves.py")
    stage1, stage2, plot = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "accm.png"
    rows = [{"step": s, "caption_acc_named_k18": a, "caption_token_acc_named_k18": a + 0.3} for s, a in ((250, 0.0),
                                                                                                       (500, 0.2))]
    stage1.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stage2.write_text(json.dumps({"step": 0, "agree_k18": 0.5, "agree_no_caption_k18": 0.45, "agree": 0.5}) + "\n"
                      + json.dumps({"step": 100, "agree_k18": 0.6, "agree": 0.6}) + "\n")
    subprocess.run([sys.executable, str(script), "--stage1", str(stage1), "--stage2", str(stage2), "--plot", str(plot)],
                   check=True, capture_output=True)
    assert plot.stat().st_size > 0
    missing = subprocess.run([sys.executable, str(script), "--stage1", str(tmp_path / "none.jsonl"),
                              "--plot", str(plot)], capture_output=True, text=True)
    assert missing.returncode != 0 and "no stage 1 log" in missing.stderr
