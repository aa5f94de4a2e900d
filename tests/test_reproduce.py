"""The reproduction tools end to end on the bundled digits: a sweep (skip, resume, failure), the
Figure 4/6-style plot from its logged metrics, and the results table beside the paper's numbers.
The tools run in this process; the sweep's training runs are processes of their own, as a user's."""

import contextlib
import io
import json
import shutil
import socket
import subprocess

import numpy as np
import pytest
from runs import losses, metrics, saved_steps

from resnet_jax.errors import DataError
from resnet_jax.tools import plot, sweep as sweep_tool, table

pytestmark = pytest.mark.slow  # the sweep's training processes: `make test-fast` leaves these out

# Two 6-step runs (plain and residual ResNet-8), evaluated at steps 3 and 6.
GRID = ["--config=configs/mnist_demo.py", "--grid=depth=8", "--grid=plain=False,True", "--grid=batch=32",
        "--grid=steps=6", "--set=config.eval_every_epochs=0.024", "--set=config.eval_batch_size=500",
        "--set=config.log_every_steps=1"]


def run_sweep(*arguments) -> tuple[list[str], str]:
  """The sweep command in this process: the runs that failed, and what it printed."""
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    failed = sweep_tool.main([*GRID, *map(str, arguments)])
  return failed, output.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  failed, output = run_sweep(f"--root={root}")
  assert not failed, output
  return root, output


def test_sweep_trains_one_workdir_per_combination(sweep):
  root, output = sweep
  names = ["depth-8_plain-False_batch-32_steps-6", "depth-8_plain-True_batch-32_steps-6"]
  assert sorted(p.name for p in root.iterdir()) == names
  for name in names:
    final = json.loads((root / name / "eval" / "step_6_live_center.json").read_text())
    assert final["final"] and f"] {name}: top-1 error {final['results']['top1_error']:.2f}%" in output
    config = json.loads((root / name / "config.json").read_text())
    assert config["model"]["plain"] == name.startswith("depth-8_plain-True") and config["num_train_steps"] == 6
  assert "sweep of 2 runs" in output and "2 finished, 0 failed" in output


def test_sweep_skips_finished_runs_and_resumes_unfinished_ones(sweep, tmp_path):
  root = tmp_path / "copy"
  shutil.copytree(sweep[0], root)
  unfinished = root / "depth-8_plain-True_batch-32_steps-6"
  shutil.rmtree(unfinished / "checkpoints" / "6")
  for record in (unfinished / "eval").glob("*.json"):
    record.unlink()
  failed, output = run_sweep(f"--root={root}")
  assert not failed, output
  assert "[1/2] depth-8_plain-False_batch-32_steps-6: finished, skipped" in output
  assert "[2/2] depth-8_plain-True_batch-32_steps-6: resuming" in output
  assert "resumed from checkpoint 3" in (unfinished / "train.log").read_text()
  assert saved_steps(unfinished)[-1] == 6
  resumed, straight = losses(unfinished), losses(sweep[0] / unfinished.name)
  assert [resumed[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]  # bit-identical continuation


def test_a_rerun_asking_for_other_settings_reports_each_finished_run_as_different(sweep, tmp_path):
  root = tmp_path / "copy"
  shutil.copytree(sweep[0], root)
  before = {path: path.read_bytes() for path in root.glob("*/eval/*.json")}
  failed, output = run_sweep(f"--root={root}", "--set=config.label_smoothing=0.1")
  names = ["depth-8_plain-False_batch-32_steps-6", "depth-8_plain-True_batch-32_steps-6"]
  assert failed == names, output
  for index, name in enumerate(names, start=1):
    assert f"[{index}/2] {name}: finished with other settings than asked (label_smoothing 0.0 -> 0.1)" in output
  assert "skipped" not in output and "starting" not in output and "2 trained with other settings" in output
  assert {path: path.read_bytes() for path in root.glob("*/eval/*.json")} == before  # nothing ran
  failed, output = run_sweep(f"--root={root}", "--set=config.log_every_steps=2")  # a free setting
  assert not failed and output.count("finished, skipped") == 2, output


def test_a_run_another_sweep_is_training_is_reported_in_progress_not_failed(sweep, tmp_path):
  from resnet_jax import lock
  root = tmp_path / "copy"
  shutil.copytree(sweep[0], root)
  busy = root / "depth-8_plain-True_batch-32_steps-6"
  for record in (busy / "eval").glob("*.json"):
    record.unlink()
  trainer = subprocess.Popen(["sleep", "120"])  # stands in for the other sweep's trainer
  try:
    (busy / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": trainer.pid,
                                           "start_time": lock._start_time(trainer.pid), "since": "now"}))
    failed, output = run_sweep(f"--root={root}")
  finally:
    trainer.kill()
  assert not failed, output
  assert f"[2/2] {busy.name}: in progress (host {socket.gethostname()}, pid {trainer.pid}, since now), skipped" in output
  assert "1 in progress elsewhere" in output and not list((busy / "eval").glob("*.json"))


def test_a_failing_run_is_reported_with_its_error_and_the_sweep_goes_on(tmp_path, capsys):
  failed = sweep_tool.main(["--config=configs/mnist_demo.py", "--grid=depth=9,10", f"--root={tmp_path}"])
  assert failed == ["depth-9", "depth-10"]
  out, err = capsys.readouterr()
  assert "[1/2] depth-9: failed (exit 1): error: a CIFAR ResNet has depth 6n+2" in out, out
  assert "[2/2] depth-10: failed (exit 1)" in out
  assert "failed: depth-9, depth-10; rerun the same command" in err


def test_plot_draws_plain_beside_residual_from_the_logged_metrics(sweep, tmp_path, capsys):
  root = sweep[0]
  plot.main([str(root), f"--output={tmp_path / 'figure.png'}", "--title=ResNet-8 on MNIST"])
  assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "2 runs: ResNet-8, plain-8" in capsys.readouterr().out
  curves = [plot.load_curves(run) for run in plot.find_runs([str(root)])]
  figure = plot.draw(curves)
  plain_axis, residual_axis = figure.axes
  assert (plain_axis.get_title(), residual_axis.get_title()) == ("plain networks", "ResNets")
  for axis, run in ((plain_axis, "depth-8_plain-True_batch-32_steps-6"),
                    (residual_axis, "depth-8_plain-False_batch-32_steps-6")):
    train_line, test_line = axis.get_lines()
    assert (train_line.get_linestyle(), test_line.get_linestyle()) == ("--", "-")
    records = metrics(root / run)
    np.testing.assert_allclose(train_line.get_ydata(), [100 * (1 - r["train/top1"]) for r in records if "train/top1" in r])
    assert list(test_line.get_xdata()) == [3, 6]
    assert list(test_line.get_ydata()) == [r["eval/top1_error"] for r in records if "eval/top1_error" in r]
  single = plot.draw(curves[:1], ymax=20)
  assert len(single.axes) == 1 and single.axes[0].get_ylim() == (0, 20)


def test_table_lists_the_measured_runs_and_rewrites_the_readme_block(sweep, tmp_path):
  root = sweep[0]
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n\n{table.BEGIN}\nold\n{table.END}\n\nafter\n")
  printed = table.main([str(root), f"--readme={readme}"])
  text = readme.read_text()
  assert "old" not in text and text.endswith("\nafter\n")
  body = text[text.index(table.BEGIN):text.index(table.END)]
  for run, label in (("depth-8_plain-False_batch-32_steps-6", "ResNet-8 (A)"),
                     ("depth-8_plain-True_batch-32_steps-6", "plain-8")):
    final = json.loads((root / run / "eval" / "step_6_live_center.json").read_text())
    row = next(line for line in body.splitlines() if line.startswith(f"| {label} |"))
    assert f"| {final['results']['top1_error']:.2f} | {final['results']['top5_error']:.2f} | - |" in row
    assert "| mnist_bundled (test) | center | 6 |" in row and "python -m resnet_jax.main --config=" in row
    assert final["hardware"]["platform"] == "cpu" and f"({final['hardware']['cores']} cores)" in row
  assert printed.strip() == body.removeprefix(table.BEGIN).strip()
  with pytest.raises(DataError, match="no evaluation records"):
    table.main([str(tmp_path / "nothing")])


@pytest.mark.parametrize("model, data, protocol, expected", [
    (dict(depth=34, plain=False, shortcut="C", variant="v1"), "imagenet2012", "10crop", (24.19, 7.40, "Table 3")),
    (dict(depth=34, plain=True, shortcut="B", variant="v1"), "imagenet2012", "10crop", (28.54, 10.02, "Tables 2-3")),
    (dict(depth=152, plain=False, shortcut="B", variant="v1"), "imagenet2012", "multiscale", (19.38, 4.49, "Table 4")),
    (dict(depth=50, plain=False, shortcut="B", variant="v1.5"), "imagenet2012", "10crop", None),  # not the paper's net
    (dict(depth=50, plain=False, shortcut="B", variant="v1"), "imagenet2012", "center", None),  # no such protocol
    (dict(depth=56, plain=False, shortcut="A", variant="v1"), "cifar10", "center", (6.97, None, "Table 6")),
    (dict(depth=56, plain=True, shortcut="A", variant="v1"), "cifar10", "center", None),  # only in Figure 6
])
def test_paper_numbers_are_matched_by_network_and_protocol(model, data, protocol, expected):
  record = {"config": {"model": dict(model, dataset="imagenet" if data == "imagenet2012" else "cifar")},
            "data": data, "protocol": protocol}
  assert table.paper_numbers(record) == expected
