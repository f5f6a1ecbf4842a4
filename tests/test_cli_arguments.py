"""Numbers a user can get wrong, and what they name that does not exist, are one line on stderr and
exit 2 before any work starts: no NaN table, no server that announces itself and never listens,
no traceback from a measurement's child process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from accm.cli import bench, export, run, search, serve, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cli,argv,flag", [
    (bench, ["accuracy", "--n", "0"], "--n"),
    (bench, ["accuracy", "--batch-size", "-4"], "--batch-size"),
    (bench, ["latency", "--repeat", "0"], "--repeat"),
    (bench, ["roofline", "--device", "orin-nano-8gb", "--compute-efficiency", "0"], "--compute-efficiency"),
    (bench, ["roofline", "--device", "orin-nano-8gb", "--memory-efficiency", "nan"], "--memory-efficiency"),
    (search, ["gsearch", "--tolerance", "-0.01"], "--tolerance"),
    (search, ["gsearch", "--z", "-1.645"], "--z"),
    (search, ["gsearch", "--n", "0"], "--n"),
    (search, ["psigmoid", "--budget-flops", "1.5"], "--budget-flops"),
    (search, ["psigmoid", "--budget-tokens", "0", "--trials", "3"], "--budget-tokens"),
    (search, ["psigmoid", "--match", "fastv:2:64", "--trials", "0"], "--trials"),
    (serve, ["--port", "99999"], "--port"),
    (serve, ["--max-batch", "0"], "--max-batch"),
    (serve, ["--timeout-s", "0"], "--timeout-s"),
    (serve, ["--threads", "two"], "--threads"),
    (export, ["--calib-samples", "0"], "--calib-samples"),
    (run, ["--image", "x.png", "--prompt", "what color is at a6 ?", "--max-new-tokens", "0"], "--max-new-tokens"),
    (run, ["--image", "x.png", "--prompt", "what color is at a6 ?", "--vision-keep", "0"], "--vision-keep"),
    (train, ["accm", "--work", "w", "--output", "o", "--keeps", "18", "0"], "--keeps"),
    (train, ["accm", "--work", "w", "--output", "o", "--stage1-batch", "0"], "--stage1-batch"),
    (train, ["accm", "--work", "w", "--output", "o", "--caption-heads", "0"], "--caption-heads"),
    (train, ["accm", "--work", "w", "--output", "o", "--stage1-describe-share", "1.5"], "--stage1-describe-share"),
    (train, ["base", "--work", "w", "--output", "o", "--llm-lr", "-1e-3"], "--llm-lr"),
    (train, ["base", "--work", "w", "--output", "o", "--eval-every", "0"], "--eval-every"),
    (train, ["base", "--work", "w", "--output", "o", "--final-gate-acc", "93"], "--final-gate-acc"),
])
def test_out_of_range_numbers_are_one_line_exit_2(cli, argv, flag, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err


def test_a_default_max_tokens_above_the_limit_is_refused(capsys):
    assert serve.main(["--default-max-tokens", "600", "--max-tokens-limit", "512"]) == 2
    assert "--default-max-tokens 600 is above --max-tokens-limit 512" in capsys.readouterr().err


def test_a_port_in_use_is_one_line_before_any_export(tmp_path):
    # a subprocess with a timeout: without the check the server would start and never return
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCM_CACHE": str(tmp_path / "cache")}
        proc = subprocess.run([sys.executable, "-m", "accm.cli.serve", "--port", str(port)], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"accm-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use "
                                   "(choose another --port or --host)")
    assert proc.stdout == "" and not (tmp_path / "cache").exists()  # nothing announced, nothing exported


@pytest.mark.parametrize("argv,words", [
    (["latency", "--bundle", "no/such/bundle"], "bundle not found"),
    (["latency", "--image", "no/such.png", "--no-peers"], "image not found"),
    (["latency", "--prompt", "   ", "--no-peers"], "prompt is empty"),
    (["latency", "--schedule", "nonsense", "--no-peers"], "unknown schedule 'nonsense'"),
    (["latency", "--schedule", str(ROOT / "benchmarks" / "results" / "gsearch_vision.json"), "--no-peers"],
     "run it with --vision-keep 266"),  # the sweep's default keeps are all and 64
])
def test_latency_checks_what_it_is_given_before_measuring(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCM_CACHE", str(tmp_path / "cache"))
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "cache").exists()  # refused before exporting anything


def test_recipe_numbers_where_zero_means_off_still_take_zero():
    args = train.build_parser().parse_args(["accm", "--work", "w", "--output", "o", "--input-tokens", "0",
                                             "--stage1-cached-scenes", "0", "--threads", "0",
                                             "--stage2-max-steps", "0"])
    assert (args.input_tokens, args.stage1_cached_scenes, args.threads, args.stage2_max_steps) == (0, 0, 0, 0)


@pytest.mark.parametrize("schedule,keep,words", [
    ("gsearch_vision.json", [], "run it with --vision-keep 266"),  # searched on the CLS top-266
    ("gsearch_vision.json", ["--vision-keep", "64"], "top 266 tokens, not 64"),
    ("layers:576,300,200", [], "3 counts for a model with 6 decoder layers"),
])
def test_a_schedule_that_does_not_fit_the_input_is_refused_before_answering(schedule, keep, words, capsys):
    spec = str(ROOT / "benchmarks" / "results" / schedule) if schedule.endswith(".json") else schedule
    assert bench.main(["accuracy", "--n", "4", "--quiet", "--schedule", spec, *keep]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv,words", [
    (["--score-layer", "99", "--vision-keep", "18"], "CLIP score layer 99 out of range for 4 layers"),
    (["--caption-mode", "oracle"], "--caption-mode chooses among ACCM's captions: add --accm"),
])
def test_accuracy_settings_that_cannot_apply_are_refused(argv, words, capsys):
    assert bench.main(["accuracy", "--n", "4", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
