"""launch/slurm.sbatch on a real one-node SLURM cluster (tests/slurm_cluster.py), submitted as a user
submits it: 2 tasks on the CPU, each a process of one `jax.distributed` run.

`make test-slurm` starts the cluster and runs these; elsewhere they are skipped with one line.
"""

import os
import pathlib
import re
import sys
import time
import uuid

import pytest
import slurm_cluster
from runs import ROOT, arguments, by_step, losses

from resnet_jax import rundir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 40
SETTINGS = ("--config.checkpoint_every_steps=20",)
# What a job asks for on sbatch's command line, instead of the script's GPU-cluster defaults.
RESOURCES = ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  if os.environ.get("RESNET_JAX_SLURM") != "1":
    pytest.skip("these run launch/slurm.sbatch on a real SLURM cluster, which `make test-slurm` starts")
  reason = slurm_cluster.unavailable()
  if reason:
    pytest.skip(f"no SLURM cluster can be started here: {reason}")
  try:
    slurm_cluster.install()
  except slurm_cluster.InstallFailed as error:
    pytest.skip(f"no SLURM cluster can be started here: {error}")
  started = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
  yield started
  started.stop()


class Job:
  """A submitted launch/slurm.sbatch job and its log (logs/<name>-<id>.out, removed afterwards)."""

  def __init__(self, cluster, workdir, *overrides, steps=STEPS, env=None):
    self.cluster, self.workdir = cluster, workdir
    name = f"test-{uuid.uuid4().hex[:8]}"
    submit_env = {k: v for k, v in cluster.env.items() if k != "XLA_FLAGS"}
    submit_env.update(PYTHON=sys.executable, **(env or {}))
    submitted = cluster.run("sbatch", "--parsable", f"--job-name={name}", *RESOURCES, "launch/slurm.sbatch",
                            *arguments(workdir, steps, *SETTINGS, *overrides), env=submit_env, cwd=ROOT)
    self.id = submitted.stdout.strip().split(";")[0]
    self.log_path = ROOT / "logs" / f"{name}-{self.id}.out"

  def fields(self) -> dict[str, str]:
    shown = self.cluster.run("scontrol", "show", "job", self.id, "-o").stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))

  def wait(self, condition, what: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
      fields = self.fields()
      if condition(fields):
        return fields
      time.sleep(0.5)
    self.cluster.run("scancel", "--signal=KILL", self.id, check=False)
    raise AssertionError(f"job {self.id} never {what}: {self.fields()}\n{self.log()[-4000:]}")

  def wait_until_done(self, timeout: float = 300) -> dict[str, str]:
    return self.wait(lambda f: f["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), "ended",
                     timeout)

  def log(self) -> str:
    return self.log_path.read_text() if self.log_path.exists() else ""

  def remove_log(self) -> None:
    self.log_path.unlink(missing_ok=True)


def logged_steps(workdir) -> int:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
  """A 2-task job that trains STEPS steps and finishes: its workdir and its log."""
  job = Job(cluster, tmp_path_factory.mktemp("uninterrupted") / "run")
  try:
    fields = job.wait_until_done()
    return {"workdir": job.workdir, "fields": fields, "log": job.log()}
  finally:
    job.remove_log()


def test_a_two_task_job_trains_to_the_end_on_the_cpu(uninterrupted):
  fields, log = uninterrupted["fields"], uninterrupted["log"]
  assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0" and fields["Restarts"] == "0", log
  assert "no GPUs in this allocation: JAX runs on the CPU" in log
  assert f"training {STEPS} steps" in log and "on 2 device(s) of cpu" in log
  assert f"the run in {uninterrupted['workdir']} is finished" in log and "requeue" not in log
  assert sorted(losses(uninterrupted["workdir"])) == list(range(1, STEPS + 1))


def test_a_preempted_job_requeues_itself_and_ends_as_an_uninterrupted_one(cluster, uninterrupted, tmp_path):
  job = Job(cluster, tmp_path / "run")
  try:
    job.wait(lambda f: logged_steps(job.workdir) >= 5, "trained 5 steps")
    cluster.run("scancel", "--signal=TERM", job.id)  # SLURM's preemption or time-limit warning
    fields = job.wait_until_done()
    log = job.log()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    preempted_at = int(re.search(r"preempted at step (\d+); checkpoint saved", log).group(1))
    assert 5 <= preempted_at < STEPS
    assert f"requeueing job {job.id} (start 2 of at most 21)" in log
    assert f"job {job.id}, start 2," in log and f"resumed from checkpoint {preempted_at}" in log
    # Both starts wrote to the one log, and the run ended as the uninterrupted one did.
    assert log.count(f"job {job.id}, start ") == 2 and "is finished" in log
    assert losses(job.workdir) == losses(uninterrupted["workdir"])
    assert rundir.final_record(job.workdir)["results"] == rundir.final_record(uninterrupted["workdir"])["results"]
  finally:
    job.remove_log()


def test_a_job_whose_run_fails_ends_once_with_the_error_in_its_log(cluster, tmp_path):
  job = Job(cluster, tmp_path / "run", "--config.schedule.learning_rate=-1")
  try:
    fields = job.wait_until_done()
    time.sleep(3 * slurm_cluster.CREDENTIAL_SECONDS)  # long enough for a requeued job to start again
    fields = job.fields()
    log = job.log()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", (fields, log)
    assert "error: schedule.learning_rate=-1" in log and "is invalid" in log and "the job ends without a requeue" in log
    assert not (tmp_path / "run" / "checkpoints").exists()
  finally:
    job.remove_log()


def test_requeues_stop_at_the_cap(cluster, tmp_path):
  job = Job(cluster, tmp_path / "run", env={"MAX_REQUEUES": "0"})
  try:
    job.wait(lambda f: logged_steps(job.workdir) >= 3, "trained 3 steps")
    cluster.run("scancel", "--signal=TERM", job.id)
    fields = job.wait_until_done()
    log = job.log()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", (fields, log)
    assert "stopped before its end at start 1 of this job, and MAX_REQUEUES=0 allows no more requeues" in log
    assert max(by_step(job.workdir, "train/loss")) < STEPS  # stopped, its checkpoint kept for a resubmit
    assert (pathlib.Path(job.workdir) / "checkpoints").exists()
  finally:
    job.remove_log()
