"""The run directory: records written whole and read back, what marks a run finished, damage from a
crash skipped with a warning, and the names the tools look for."""

import json
import pathlib
import signal
import subprocess
import sys

import pytest

from conftest import load_config
from resnet_jax import rundir
from resnet_jax.tools import table

RESULTS = {"top1": 91.5, "top5": 99.0, "top1_error": 8.5, "top5_error": 1.0, "loss": 0.3, "examples": 1000}


def test_records_name_what_was_scored_and_the_final_live_one_marks_the_run_finished(tmp_path):
  config = load_config("cifar10")
  assert rundir.final_record(tmp_path) is None
  rundir.write_record(tmp_path, 6, config, RESULTS)  # a periodic evaluation
  rundir.write_record(tmp_path, 8, config, dict(RESULTS, top1=90.0), weights="ema", final=True)
  test = rundir.write_record(tmp_path, 8, config, RESULTS, final=True, evaluation="test", split="test")
  assert rundir.final_record(tmp_path) is None  # neither the EMA's nor a named evaluation's counts
  rundir.write_record(tmp_path, 8, config, RESULTS, final=True)
  final = rundir.final_record(tmp_path)
  assert (final["step"], final["weights"], final["split"], final["evaluation"]) == (8, "live", "train[45000:]", None)
  assert test.name == "step_8_live_center_test.json"
  named = json.loads(test.read_text())
  assert (named["split"], named["evaluation"], named["data"]) == ("test", "test", "cifar10")
  assert named["config"]["model"]["depth"] == 20 and named["hardware"]["platform"] == "cpu"
  assert "xla_flags" in named["hardware"] and isinstance(named["hardware"]["isa"], list)
  assert [path.name for path, _ in rundir.records(tmp_path)] == [
      "step_6_live_center.json", "step_8_ema_center.json", "step_8_live_center.json", "step_8_live_center_test.json"]


def test_a_truncated_record_is_skipped_with_a_warning_so_the_run_counts_as_unfinished(tmp_path, caplog):
  path = rundir.write_record(tmp_path, 8, load_config("mnist_demo"), RESULTS, final=True)
  assert rundir.final_record(tmp_path)
  path.write_text(path.read_text()[:40])  # cut short, as by a crash while writing it
  assert rundir.final_record(tmp_path) is None  # so a sweep resumes (and completes) the run
  assert "skipping the unreadable evaluation record" in caplog.text
  with pytest.raises(FileNotFoundError, match="no evaluation records"):
    table.find_records([str(tmp_path)])


# Run in a fresh process: every file write stops half way and the process is SIGKILLed there.
KILLED_HALF_WAY_THROUGH = """
import os, pathlib, signal, sys
from conftest import load_config
from resnet_jax import rundir

def half_then_killed(path, text, *args, **kwargs):
  with open(path, "w") as file:
    file.write(text[:len(text) // 2])
  os.kill(os.getpid(), signal.SIGKILL)
pathlib.Path.write_text = half_then_killed
workdir, what = sys.argv[1:]
config = load_config("mnist_demo")
if what == "record":
  rundir.write_record(workdir, 8, config, {RESULTS!r}, final=True)
else:
  rundir.write_config(workdir, dict(config.to_dict(), seed=7))
"""


@pytest.mark.parametrize("what", ["record", "config"])
def test_a_process_killed_while_writing_a_record_or_the_config_leaves_the_old_ones_whole(tmp_path, what):
  config = load_config("mnist_demo")
  rundir.write_config(tmp_path, config.to_dict())
  rundir.write_record(tmp_path, 6, config, RESULTS)
  before = {path.name: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
  killed = subprocess.run([sys.executable, "-c", KILLED_HALF_WAY_THROUGH.format(RESULTS=RESULTS), str(tmp_path), what],
                          cwd=pathlib.Path(__file__).parent, capture_output=True, text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  after = {path.name: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.name.startswith(".")}
  assert after == before  # the half-written file is a hidden temporary one, never in a reader's way
  assert [path.name for path, _ in rundir.records(tmp_path)] == ["step_6_live_center.json"]
  assert rundir.final_record(tmp_path) is None and rundir.read_config(tmp_path)["seed"] == config.seed


def test_a_checkpoint_directory_names_its_run_and_a_converted_one_none():
  assert rundir.run_of_checkpoint("runs/r50/checkpoints/20") == str(pathlib.Path("runs/r50").absolute())
  assert rundir.run_of_checkpoint("/models/converted_resnet50") is None  # needs --workdir: where the record goes


def test_a_metrics_line_cut_short_by_a_crash_is_skipped_and_the_resumed_run_logs_apart(tmp_path, caplog):
  from resnet_jax.reporting import Reporter
  (tmp_path / rundir.METRICS).write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/lo')
  reporter = Reporter(str(tmp_path))
  reporter.scalars(2, {"train/loss": 2.25})
  reporter.close()
  assert rundir.read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.25}]
  assert "line 2 is damaged" in caplog.text


def test_metric_names_of_the_eval_split_named_evaluations_and_the_ema():
  assert [rundir.metric_prefix(), rundir.metric_prefix(weights="ema"), rundir.metric_prefix("test"),
          rundir.metric_prefix("test", "ema")] == ["eval/", "eval_ema/", "eval_test/", "eval_test_ema/"]
