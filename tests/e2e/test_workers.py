"""Several workers on one Redis, with real processes: Label Studio 1.23.2, Redis and two `shoeseg worker`s.

Three Label Studio projects share one Redis (and one model registry). Training jobs spread over both workers,
a project never has two trainings running at once (the trigger's lease, :mod:`shoeseg_services.trigger`), one worker
trains in two processes under torchrun (``SHOESEG_GPUS_PER_JOB=2``, gloo on CPU), and a worker killed with
SIGKILL in the middle of a training leaves its project to the other worker once the lease has run out.

Nothing is mocked; trainings are tiny (2 iterations at 64-96 px on CPU from random weights).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry

from shoeseg_services import trigger
from shoeseg_services.queues import PREDICT_QUEUE, TRAIN_QUEUE
from shoeseg_services.settings import Settings
from tests.e2e.stack import BIN, Process, descendants, wait_for
from tests.synth import make_images

pytestmark = pytest.mark.e2e

N_PROJECTS = 3
N_TASKS = 4
LEASE_TTL_S = 4
TINY = {
    "SHOESEG_TRAIN_ITERS": "2", "SHOESEG_MIN_SIZE": "64", "SHOESEG_MAX_SIZE": "96", "SHOESEG_ROI_BATCH": "32",
    "SHOESEG_INIT_WEIGHTS": "none", "SHOESEG_DEVICE": "cpu", "SHOESEG_PROMOTE_TOLERANCE": "1.0",
    "SHOESEG_PREDICT_BATCH": "4", "SHOESEG_RETRY_MAX": "0", "SHOESEG_LEASE_TTL": str(LEASE_TTL_S), "SHOESEG_IDLE_TRAINING": "false",
    "OMP_NUM_THREADS": "1",
}


class Cluster:
    """Two workers (and later a third) on one Redis database, and three projects in Label Studio."""

    def __init__(self, *, ls, client, redis_server, root: Path, db: int = 10):
        import os

        self.ls, self.client, self.root = ls, client, root
        self.redis_url = f"redis://127.0.0.1:{redis_server.port}/{db}"
        self.conn = redis.Redis.from_url(self.redis_url)
        self.conn.flushdb()
        self.model_dir = root / "models"
        self.env = {**os.environ, **TINY, "REDIS_URL": self.redis_url, "SHOESEG_MODEL_DIR": str(self.model_dir),
                    "SHOESEG_CACHE_DIR": str(root / "cache"), "LABEL_STUDIO_URL": ls.url,
                    "LABEL_STUDIO_API_KEY": ls.token, "PYTHONUNBUFFERED": "1"}
        self.settings = Settings.from_env(self.env)
        self.workers: dict[str, Process] = {}
        self.projects: list[int] = []
        self.data: dict[int, tuple] = {}  # project -> (its dataset, task ids by file name)
        self.relabelled = 0

    def relabel(self, project: int) -> None:
        """A changed label in the project (a second annotation of one of its tasks), so that a training has
        something new to learn (a round with nothing new since the version it would fine-tune is skipped)."""
        from via_tools.labelstudio import region_to_ls_results

        ds, task_ids = self.data[project]
        im = ds.images[self.relabelled % len(ds.images)]
        self.relabelled += 1
        result = [r for region in im.regions for r in region_to_ls_results(
            region, im.width_px, im.height_px, from_name="label", to_name="image")]
        self.client.annotations.create(id=task_ids[im.file_name], result=result, project=project)

    def read_its_labels(self, project: int) -> bool:
        """The project's training runs and has read its labels: a label changed now is new to a follow-up (one
        changed before the running job read it would leave the follow-up nothing new, and it would be skipped)."""
        st = trigger.training_state(self.conn, project)
        if st["liveness"] != "running" or not st.get("job_id"):
            return False
        stage = Job.fetch(st["job_id"], connection=self.conn).meta.get("stage")
        return stage not in (None, "starting", "reading annotations", "fetching images")

    def start_worker(self, role: str, **env) -> str:
        name = f"{role}-{time.time_ns()}"
        self.workers[name] = Process(name, [str(BIN / "shoeseg"), "worker", "--name", name],
                                     env={**self.env, **env}, log_dir=self.root)
        return name

    def registered(self) -> set[str]:
        return {w.name for w in Worker.all(connection=self.conn)}

    def wait_registered(self, names: set[str]) -> None:
        wait_for(f"workers {sorted(names)}", lambda: self.registered() == names, timeout_s=120, logs=self.logs())

    def logs(self) -> tuple:
        return tuple(p.log for p in self.workers.values())

    def request(self, project: int, reason: str) -> dict:
        return trigger.request_training(self.conn, project, reason=reason, settings=self.settings)

    def train_jobs(self, project: int) -> list[Job]:
        seq = int(trigger.training_state(self.conn, project).get("seq") or 0)
        return [Job.fetch(f"train-{project}-{n}", connection=self.conn) for n in range(1, seq + 1)]

    def wait_idle(self, timeout_s: float = 240) -> None:
        def idle():
            states = [trigger.training_state(self.conn, p).get("state") for p in self.projects]
            return (all(s in (None, "idle") for s in states)
                    and not Queue(TRAIN_QUEUE, connection=self.conn).count
                    and not Queue(PREDICT_QUEUE, connection=self.conn).count
                    and not StartedJobRegistry(PREDICT_QUEUE, connection=self.conn).count)
        wait_for("every project idle and the queues empty", idle, timeout_s=timeout_s, every_s=0.5, logs=self.logs())

    def close(self) -> None:
        for p in self.workers.values():
            p.stop()


@pytest.fixture(scope="module")
def cluster(label_studio, ls_client, redis_server, tmp_path_factory):
    from shoeseg_services.ls_api import import_dataset

    cl = Cluster(ls=label_studio, client=ls_client, redis_server=redis_server, root=tmp_path_factory.mktemp("workers"))
    try:
        # one worker trains in its own process, the other in two processes under torchrun (gloo on CPU)
        cl.plain = cl.start_worker("worker-a")
        cl.torchrun = cl.start_worker("worker-b", SHOESEG_GPUS_PER_JOB="2")
        for k in range(N_PROJECTS):
            images_dir = Path(label_studio.files_root) / f"workers-{k}-{time.time_ns()}"
            ds = make_images(images_dir, N_TASKS, seed=20 + k, prefix=f"p{k}-")
            res = import_dataset(ls_client, ds, images_dir=images_dir, title=f"workers e2e {k}",
                                 files_root=label_studio.files_root)
            cl.projects.append(res.project_id)
            cl.data[res.project_id] = (ds, res.task_ids)
        cl.wait_registered({cl.plain, cl.torchrun})
        yield cl
    finally:
        cl.close()


def _versions_by_job(cl: Cluster) -> dict[str, object]:
    from shoeseg_services.registry import ModelRegistry

    return {v.meta.get("job_id"): v for v in ModelRegistry(cl.model_dir).versions()}


def _assert_one_training_at_a_time(jobs: list[Job]) -> None:
    spans = sorted((j.started_at, j.ended_at or j.started_at, j.id) for j in jobs if j.started_at)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"{b} started at {start} before {a} ended at {end}"


@pytest.mark.slow
def test_three_projects_share_two_workers_one_training_per_project_at_a_time(cluster):
    from shoeseg.checkpoint import read_checkpoint_meta

    cl = cluster
    started = StartedJobRegistry(TRAIN_QUEUE, connection=cl.conn)
    most_at_once: dict[int, int] = {}
    stop = threading.Event()

    def watch():  # samples the jobs that run, per project
        while not stop.is_set():
            running: dict[int, int] = {}
            for job_id in started.get_job_ids():
                project = int(job_id.split("-")[1])
                running[project] = running.get(project, 0) + 1
            for project, n in running.items():
                most_at_once[project] = max(most_at_once.get(project, 0), n)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    first = [cl.request(p, "first round") for p in cl.projects]
    assert [r["action"] for r in first] == ["queued"] * N_PROJECTS
    # more labels while each project trains: one follow-up per project, never a second training beside the first
    asked: set[int] = set()
    while len(asked) < N_PROJECTS and time.perf_counter() - t0 < 120:
        for p in set(cl.projects) - asked:
            if cl.read_its_labels(p):
                cl.relabel(p)
                answers = {cl.request(p, f"labels during the run ({k})")["action"] for k in range(5)}
                assert answers == {"follow_up"}, answers
                asked.add(p)
        time.sleep(0.05)
    cl.wait_idle()
    stop.set()
    watcher.join()
    print(f"\n{N_PROJECTS} projects, two workers: idle after {time.perf_counter() - t0:.1f} s")

    by_job = _versions_by_job(cl)
    worker_of: dict[str, str] = {}
    for p in cl.projects:
        jobs = cl.train_jobs(p)
        statuses = [j.get_status() for j in jobs]
        assert statuses == ["finished"] * len(jobs), statuses
        follow_ups = 1 if p in asked else 0
        assert len(jobs) == 1 + follow_ups  # five requests during the run gave one follow-up job
        _assert_one_training_at_a_time(jobs)
        for j in jobs:
            worker_of[j.id] = j.worker_name
            assert by_job[j.id].meta["project"] == p  # a registered version per job, of that project
            assert (j.meta["iteration"], j.meta["max_iter"]) == (2, 2), j.meta  # progress, from either path
    assert set(most_at_once.values()) <= {1}, most_at_once
    # the jobs were spread over both workers, and the torchrun worker trained in two processes
    assert set(worker_of.values()) == {cl.plain, cl.torchrun}, worker_of
    for job_id, worker in worker_of.items():
        metrics = read_checkpoint_meta(by_job[job_id].checkpoint)["metrics"]
        if worker == cl.torchrun:
            assert metrics["distributed"]["world_size"] == 2 and metrics["distributed"]["iterations_per_rank"] == [2, 2]
        else:
            assert "distributed" not in metrics


@pytest.mark.slow
def test_a_worker_killed_mid_training_leaves_its_project_to_the_other_worker(cluster):
    cl = cluster
    cl.wait_idle()
    # the torchrun worker gives way to one whose trainings take long enough to be killed in the middle
    cl.workers[cl.torchrun].stop()
    slow = cl.start_worker("worker-slow", SHOESEG_TRAIN_ITERS="400")
    cl.wait_registered({cl.plain, slow})

    a, b = cl.projects[:2]
    for p in (a, b):
        cl.relabel(p)
    queued = {p: cl.request(p, "before the crash")["job_id"] for p in (a, b)}  # one job for each worker

    def on_slow():
        for p, job_id in queued.items():
            job = Job.fetch(job_id, connection=cl.conn)
            if job.worker_name == slow and job.meta.get("stage") == "training":
                return p
        return None

    victim = wait_for("the slow worker to train", on_slow, timeout_s=120, every_s=0.2, logs=cl.logs())
    dead_job = queued[victim]
    time.sleep(1)
    assert descendants(cl.workers[slow].proc.pid), "the work horse runs"
    cl.workers[slow].kill(signal.SIGKILL)  # the worker and its work horse, mid-training
    killed_at = time.time()

    # until the lease runs out the project counts as training: a request waits as a follow-up, nothing starts
    assert trigger.training_state(cl.conn, victim)["liveness"] == "running"
    assert cl.request(victim, "labels while the lease lives")["action"] == "follow_up"
    wait_for("the dead training's lease to run out",
             lambda: trigger.training_state(cl.conn, victim)["liveness"] == "none", timeout_s=3 * LEASE_TTL_S,
             every_s=0.2, logs=cl.logs())
    assert time.time() - killed_at <= LEASE_TTL_S + 2
    # the next request enqueues a fresh job in place of the lost one; the surviving worker runs it
    again = cl.request(victim, "labels after the crash")
    assert again["action"] == "queued" and again.get("replaces_lost_job") == dead_job, again
    cl.wait_idle()

    new_job = Job.fetch(again["job_id"], connection=cl.conn)
    assert new_job.get_status() == "finished" and new_job.worker_name == cl.plain
    assert new_job.started_at.timestamp() >= killed_at
    version = _versions_by_job(cl)[new_job.id]
    assert version.meta["project"] == victim and version.meta["reason"] == "labels after the crash"
    assert dead_job not in _versions_by_job(cl)  # the killed training registered nothing
    other = Job.fetch(queued[b if victim == a else a], connection=cl.conn)
    assert other.get_status() == "finished" and other.worker_name == cl.plain
