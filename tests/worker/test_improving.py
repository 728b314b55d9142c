"""Training in idle time, through a real rq worker and a real Redis, with a tiny model.

What is checked: a chain of idle chunks stops at its budget, each chunk's gate evidence is recorded and the
pushes run before the chunks; refused chunks still add up (each continues the last one's weights); a chunk
gives the worker back within an iteration when a round is queued; a chunk killed with SIGKILL leaves the
current version as it was and loadable.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from datetime import datetime, timezone

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job

from shoeseg_services import idle_training, trigger
from shoeseg_services.queues import IDLE_QUEUE, QUEUES, TRAIN_QUEUE
from shoeseg_services.registry import ModelRegistry
from shoeseg_services.settings import Settings
from tests.helpers import skip_without_session_groups


def _work_all(conn) -> None:
    SimpleWorker(list(QUEUES), connection=conn).work(burst=True)


def _may_raise_priority(to_nice: int) -> bool:
    """Whether this process may set its nice back down to ``to_nice`` (root, or RLIMIT_NICE allows it)."""
    import resource

    return os.geteuid() == 0 or 20 - resource.getrlimit(resource.RLIMIT_NICE)[0] <= to_nice


def _first_version(conn, settings) -> str:
    queued = trigger.request_training(conn, 1, reason="test", settings=settings)
    SimpleWorker([TRAIN_QUEUE], connection=conn).work(burst=True)
    result = Job.fetch(queued["job_id"], connection=conn).return_value()
    assert result["promoted"], result
    return result["version"]


def test_the_idle_trigger_queues_one_chunk_only_when_nothing_else_runs(redis_conn, monkeypatch):
    settings = Settings.from_env({"SHOESEG_IDLE_MAX_ITERS": "100", "SHOESEG_IDLE_CHUNK_ITERS": "60"})
    assert idle_training.request_idle(redis_conn, 4, settings=settings.with_(idle_training=False))["action"] == "disabled"
    queued = trigger.request_training(redis_conn, 4, reason="test", settings=settings)
    assert idle_training.request_idle(redis_conn, 4, settings=settings)["action"] == "busy"  # a round waits
    Queue(TRAIN_QUEUE, connection=redis_conn).remove(queued["job_id"])
    redis_conn.delete(trigger.state_key(4))
    first = idle_training.request_idle(redis_conn, 4, settings=settings)
    assert first["action"] == "queued" and Queue(IDLE_QUEUE, connection=redis_conn).job_ids == [first["job_id"]]
    assert idle_training.request_idle(redis_conn, 4, settings=settings)["action"] == "already_queued"
    Queue(IDLE_QUEUE, connection=redis_conn).remove(first["job_id"])
    Job.fetch(first["job_id"], connection=redis_conn).delete()
    idle_training.set_idle_state(redis_conn, 4, iters_done=100)
    assert idle_training.request_idle(redis_conn, 4, settings=settings)["action"] == "capped"
    assert idle_training.idle_state(redis_conn, 4)["state"] == "capped"
    # a round on new labels starts a new budget
    assert idle_training.request_idle(redis_conn, 4, settings=settings, reset=True)["action"] == "queued"
    assert idle_training.idle_state(redis_conn, 4)["iters_done"] == "0"
    assert "waiting on shoeseg-idle" not in (idle_training.labelled_work_waiting(redis_conn, 4) or "")


@pytest.mark.slow
def test_idle_chunks_follow_the_push_record_their_evidence_and_stop_at_the_budget(redis_conn, fake_ls, loop_env,
                                                                                 monkeypatch):
    monkeypatch.setenv("SHOESEG_IDLE_TRAINING", "true")
    monkeypatch.setenv("SHOESEG_IDLE_CHUNK_ITERS", "1")
    monkeypatch.setenv("SHOESEG_IDLE_MAX_ITERS", "2")
    monkeypatch.setenv("SHOESEG_PROMOTE_TOLERANCE", "1.0")
    monkeypatch.setenv("SHOESEG_IDLE_THREADS", "1")
    import torch

    nice, threads = os.getpriority(os.PRIO_PROCESS, 0), torch.get_num_threads()
    queued = trigger.request_training(redis_conn, 1, reason="test", settings=Settings.from_env())
    _work_all(redis_conn)
    registry = ModelRegistry(loop_env.model_dir)
    versions = sorted(registry.versions(), key=lambda v: v.created_at)
    assert [v.meta.get("kind") for v in versions] == ["round", "idle", "idle"]
    # two chunks ran in this process (rq's SimpleWorker): its nice and its torch threads are as they were, where
    # the system lets a process raise its priority again (else at the idle nice, not twice lowered)
    assert torch.get_num_threads() == threads
    assert os.getpriority(os.PRIO_PROCESS, 0) == (nice if _may_raise_priority(nice) else max(nice, 10))
    first = Job.fetch(queued["job_id"], connection=redis_conn).return_value()
    push = Job.fetch(first["predict_job_id"], connection=redis_conn)
    chunk = Job.fetch("idle-1-1", connection=redis_conn)
    assert push.ended_at <= chunk.started_at  # the first version's predictions before any further training
    for version, parent in zip(versions[1:], versions[:-1], strict=True):
        gate = version.meta["gate"]
        assert version.parent == parent.version and gate["compared_on"] >= 1
        assert gate["ci_low"] <= gate["diff"] <= gate["ci_high"] and version.meta["decision"] == gate["reason"]
        assert version.meta["train_config"]["min_size"] == round(64 * 4 / 3)  # the idle recipe's larger size
    state = idle_training.idle_state(redis_conn, 1)
    assert state["iters_done"] == "2" and state["state"] == "capped" and not state["job_id"]
    assert not Queue(IDLE_QUEUE, connection=redis_conn).count


@pytest.mark.slow
def test_refused_chunks_are_one_training_each_continuing_the_last(redis_conn, fake_ls, loop_env, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("SHOESEG_IDLE_TRAINING", "true")
    monkeypatch.setenv("SHOESEG_IDLE_CHUNK_ITERS", "1")
    monkeypatch.setenv("SHOESEG_IDLE_MAX_ITERS", "3")
    first = _first_version(redis_conn, Settings.from_env())
    monkeypatch.setenv("SHOESEG_PROMOTE_TOLERANCE", "-1.0")  # a candidate must gain more than 1.0: none is promoted
    idle_training.request_idle(redis_conn, 1, settings=Settings.from_env())
    _work_all(redis_conn)
    registry = ModelRegistry(loop_env.model_dir)
    assert registry.current_version_id() == first
    chunks = sorted((v for v in registry.versions() if v.meta.get("kind") == "idle"), key=lambda v: v.created_at)
    assert [v.meta["promoted"] for v in chunks] == [False, False, False]
    started = [first] + [v.version for v in chunks[:-1]]
    for chunk, before in zip(chunks, started, strict=True):
        assert chunk.parent == first  # judged against the current version
        assert chunk.meta["trained_from"] == before  # and trained on from the chunk before it
        assert Path(chunk.meta["train_config"]["init_from"]) == registry.get(before).checkpoint
    state = idle_training.idle_state(redis_conn, 1)
    assert (state["line_version"], state["line_base"], state["iters_done"]) == (chunks[-1].version, first, "3")


def test_the_idle_line_restarts_from_the_current_version_when_it_is_stale():
    from types import SimpleNamespace

    from worker.improving import idle_line

    class Registry:
        def __init__(self, *names):
            self.known = {n: SimpleNamespace(version=n) for n in names}

        def has_version(self, v):
            return v in self.known

        def get(self, v):
            return self.known[v]

    current = SimpleNamespace(version="v1")
    registry = Registry("v1", "c1")
    state = {"line_version": "c1", "line_base": "v1", "labels": "L"}
    assert idle_line(registry, state, labels="L", current=current).version == "c1"
    assert idle_line(registry, state, labels="M", current=current) is current  # the labels changed
    stale = {**state, "line_base": "v0"}  # a round or a rollback changed the current version
    assert idle_line(registry, stale, labels="L", current=current) is current
    assert idle_line(Registry("v1"), state, labels="L", current=current) is current  # the candidate is gone
    assert idle_line(registry, {"labels": "L"}, labels="L", current=current) is current  # no line yet


@pytest.mark.slow
def test_an_idle_chunk_gives_the_worker_back_within_an_iteration_when_a_round_is_queued(redis_conn, fake_ls,
                                                                                       loop_env, monkeypatch):
    _first_version(redis_conn, loop_env)
    monkeypatch.setenv("SHOESEG_IDLE_TRAINING", "true")
    monkeypatch.setenv("SHOESEG_IDLE_CHUNK_ITERS", "100000")
    monkeypatch.setenv("SHOESEG_IDLE_MAX_ITERS", "100000")
    chunk = idle_training.request_idle(redis_conn, 1, settings=Settings.from_env())
    asked: dict = {}

    def label_event() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            meta = Job.fetch(chunk["job_id"], connection=redis_conn).get_meta(refresh=True)
            if meta.get("stage") == "training" and int(meta.get("iteration") or 0) >= 1:
                break
            time.sleep(0.05)
        os.environ["SHOESEG_IDLE_TRAINING"] = "false"  # the round's end queues no further chunk
        fake_ls.tasks[1]["total_annotations"] = 1  # a new label
        asked["at"] = datetime.now(timezone.utc)
        asked["round"] = trigger.request_training(redis_conn, 1, reason="new labels", settings=loop_env)

    thread = threading.Thread(target=label_event)
    thread.start()
    _work_all(redis_conn)  # the chunk, then the round: one worker
    thread.join()
    idle = Job.fetch(chunk["job_id"], connection=redis_conn).return_value()
    # the round shows first in the project's state, then on the training queue: either names it
    assert idle["outcome"] == "yielded"
    assert "shoeseg-train" in idle["why"] or asked["round"]["job_id"] in idle["why"], idle["why"]
    round_job = Job.fetch(asked["round"]["job_id"], connection=redis_conn)
    waited = (round_job.started_at.replace(tzinfo=timezone.utc) - asked["at"]).total_seconds()
    assert waited < 30, waited  # about 1 s on an idle machine; the bound leaves room for a loaded CI runner
    assert round_job.return_value()["promoted"] in (True, False)  # it ran to the end
    assert idle_training.idle_state(redis_conn, 1)["state"] == "yielded"


def _run_chunk(project_id: int, images_dir, ds, tasks) -> None:  # pragma: no cover - runs in the child process
    os.setsid()  # a session of its own, as a worker's: the chunk's lower session nice must not reach the test's
    from tests.worker.conftest import FakeLabelStudio, use_fake_ls
    from worker.jobs import improve_project

    ls = FakeLabelStudio(images_dir, ds)
    ls.tasks = tasks
    with pytest.MonkeyPatch.context() as mp:
        use_fake_ls(ls, mp)
        improve_project(project_id)


def _run_chunk_in_own_session(project_id: int, images_dir, ds, tasks, report) -> None:  # pragma: no cover - child
    from shoeseg_services.processes import session_nice

    _run_chunk(project_id, images_dir, ds, tasks)
    report.put(session_nice())


def test_a_chunk_lowers_its_sessions_share_of_the_cpu_while_it_trains_and_gives_it_back(redis_conn, fake_ls,
                                                                                        loop_env, monkeypatch):
    skip_without_session_groups()
    # a process's own nice counts only within its session: against a backend in another session the chunk
    # must lower its session's (Linux autogroup), and set it back for the worker's next job
    _first_version(redis_conn, loop_env)
    monkeypatch.setenv("SHOESEG_IDLE_TRAINING", "true")
    monkeypatch.setenv("SHOESEG_IDLE_CHUNK_ITERS", "3")
    monkeypatch.setenv("SHOESEG_IDLE_NICE", "10")
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    child = ctx.Process(target=_run_chunk_in_own_session,
                        args=(1, fake_ls.images_dir, fake_ls.ds, fake_ls.tasks, report))
    child.start()
    seen = set()
    while child.is_alive():
        try:
            with open(f"/proc/{child.pid}/autogroup", encoding="ascii") as f:
                seen.add(int(f.read().split()[-1]))
        except (OSError, ValueError, IndexError):  # between its start and its end
            pass
        time.sleep(0.01)
    child.join(60)
    assert child.exitcode == 0  # a chunk that failed says so here, not after a wait for its report
    after = report.get(timeout=30)
    assert 10 in seen and after == 0, (seen, after)


def test_a_job_after_a_killed_chunk_sets_the_session_back_and_leaves_a_chosen_nice_alone():
    skip_without_session_groups()
    import subprocess
    import sys

    code = ("from shoeseg_services.processes import session_nice, set_session_nice\n"
            "from shoeseg_services.settings import Settings\n"
            "from worker.improving import undo_stale_idle_priority\n"
            "s = Settings(idle_nice=10)\n"
            "set_session_nice(10); undo_stale_idle_priority(s); a = session_nice()\n"
            "set_session_nice(5); undo_stale_idle_priority(s); print(a, session_nice())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         start_new_session=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "5"]


@pytest.mark.slow
def test_a_chunk_killed_with_sigkill_leaves_the_current_version_loadable(redis_conn, fake_ls, loop_env,
                                                                        monkeypatch):
    from shoeseg.predict import Predictor

    current = _first_version(redis_conn, loop_env)
    monkeypatch.setenv("SHOESEG_IDLE_TRAINING", "true")
    monkeypatch.setenv("SHOESEG_IDLE_CHUNK_ITERS", "100000")
    monkeypatch.setenv("SHOESEG_IDLE_MAX_ITERS", "100000")
    # a fresh interpreter (spawn): a child forked from this process, which has run torch, can hang in OpenMP
    child = multiprocessing.get_context("spawn").Process(target=_run_chunk,
                                                         args=(1, fake_ls.images_dir, fake_ls.ds, fake_ls.tasks))
    child.start()
    runs = loop_env.cache_dir / "runs" / "1"
    deadline = time.monotonic() + 300  # generous: a loaded CI runner reads the labels and builds the model slowly
    while time.monotonic() < deadline:
        rows = [p for p in runs.glob("run-*/metrics.jsonl") if p.stat().st_size]
        if rows:
            break
        time.sleep(0.05)
    assert rows, "the chunk never started training"
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    registry = ModelRegistry(loop_env.model_dir)
    assert registry.current_version_id() == current and len(registry.versions()) == 1
    predictor = Predictor.from_checkpoint(registry.current().checkpoint, device="cpu")
    assert predictor.class_names == ["shoe"]
