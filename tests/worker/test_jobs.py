"""The jobs through a real rq worker and a real Redis, with a tiny model.

Label Studio is replaced by a small in-memory stand-in here (the end-to-end tests in tests/e2e use the
real server); everything else is real: rq, Redis, training, evaluation, the registry, the image cache.
"""

from __future__ import annotations

import hashlib
import random
from types import SimpleNamespace

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from shoeseg_services import trigger
from shoeseg_services.queues import PREDICT_QUEUE, TRAIN_QUEUE
from shoeseg_services.settings import Settings, SettingsError
from via_tools.labelstudio import labeling_config
from worker import jobs


def assert_backend_agrees(fake_ls, settings, version: str) -> None:
    """``/predict`` (the backend, in this process, same images and model) against what the worker pushed.

    The backend is asked for the worker's batches (the same tasks, in the same order, as many per forward
    pass), so that both run the very same forward passes: torchvision pads the images of a batch together.
    """
    from fastapi.testclient import TestClient

    from backend.app import create_app

    config = labeling_config(["shoe"])
    order = [{"id": t["id"], "data": t["data"]} for t in jobs.task_order([dict(t) for t in fake_ls.tasks])]
    step = settings.predict_batch
    pushed = {p["task"]: p for p in fake_ls.pushed}
    with TestClient(create_app(settings.with_(batch_size=step))) as client:
        for start in range(0, len(order), step):
            tasks = order[start:start + step]
            body = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "1.1"}).json()
            assert len(body["results"]) == len(tasks)
            for task, served in zip(tasks, body["results"], strict=True):
                stored = dict(pushed[task["id"]])
                assert stored.pop("task") == task["id"]
                assert served == stored, task["id"]
    assert len(pushed) == len(order)


def work(conn, *queues):
    SimpleWorker(list(queues), connection=conn).work(burst=True)


def _id_hash(task_id) -> int:
    # The rule as documented, computed here on its own: the first 8 bytes of the BLAKE2b digest of the id's
    # text, big-endian. Pinned on purpose: another hash would move tasks between training and validation.
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest(), "big")


def _selected(ids, modulo) -> set[str]:
    return {str(t) for t in ids if _id_hash(t) % modulo == 0}


HITS = [str(i) for i in range(1, 2000) if _id_hash(i) % 5 == 0]
MISSES = [str(i) for i in range(1, 2000) if _id_hash(i) % 5 != 0]


def test_validation_subset_is_exactly_the_ids_whose_hash_is_divisible():
    ids = [str(i) for i in range(1, 200)]
    expected = _selected(ids, 5)
    assert 0 < len(expected) < len(ids)  # neither small-project fallback applies
    assert jobs.validation_task_ids(ids, modulo=5) == expected
    assert jobs.validation_task_ids(ids, modulo=7) == _selected(ids, 7)
    # the same ids again, in another order, or as ints: the same subset, as strings
    shuffled = ids[::-1]
    random.Random(0).shuffle(shuffled)
    assert jobs.validation_task_ids(shuffled, modulo=5) == expected
    assert jobs.validation_task_ids([int(t) for t in ids], modulo=5) == expected
    assert jobs.validation_task_ids(ids, modulo=5) == expected
    # adding tasks never moves an existing one
    assert jobs.validation_task_ids(ids + [str(i) for i in range(200, 400)], modulo=5) & set(ids) == expected


def test_one_task_is_validation_only_when_its_hash_says_so():
    assert jobs.validation_task_ids([HITS[0]], modulo=5) == {HITS[0]}
    assert jobs.validation_task_ids([int(HITS[0])], modulo=5) == {HITS[0]}
    assert jobs.validation_task_ids([MISSES[0]], modulo=5) == set()
    assert jobs.validation_task_ids([], modulo=5) == set()


def test_small_projects_keep_a_task_on_each_side():
    # no id selected by its hash: the one with the smallest hash validates
    ids = MISSES[:3]
    assert jobs.validation_task_ids(ids, modulo=5) == {min(ids, key=_id_hash)}
    # every id selected: the one with the largest hash trains
    ids = HITS[:3]
    assert jobs.validation_task_ids(ids, modulo=5) == set(ids) - {max(ids, key=_id_hash)}
    # some of each: the plain rule
    ids = [MISSES[0], HITS[0], MISSES[1], HITS[1]]
    assert jobs.validation_task_ids(ids, modulo=5) == {HITS[0], HITS[1]}
    for n in (2, 3, 4):
        for start in range(0, 40, n):
            ids = [str(i) for i in range(start + 1, start + 1 + n)]
            val = jobs.validation_task_ids(ids, modulo=5)
            assert val and val < set(ids), ids


def test_about_one_task_in_modulo_validates():
    ids = list(range(1, 20001))
    for modulo in (2, 5, 10):
        share = len(jobs.validation_task_ids(ids, modulo=modulo)) / len(ids)
        assert abs(share - 1 / modulo) < 0.02, (modulo, share)


def test_the_validation_subset_is_capped_by_lowest_hash_and_a_training_task_never_moves_into_it():
    ids = [str(i) for i in range(1, 2000)]
    capped = jobs.validation_task_ids(ids, modulo=5, max_size=30)
    assert capped == set(sorted(_selected(ids, 5), key=_id_hash)[:30])
    grown = jobs.validation_task_ids(ids + [str(i) for i in range(2000, 4000)], modulo=5, max_size=30)
    assert len(grown) == 30 and (grown & set(ids)) <= capped  # displaced tasks train; none joins from training


def test_task_order_puts_unlabelled_first():
    tasks = [{"id": 3, "total_annotations": 1}, {"id": 5, "total_annotations": 0}, {"id": 1, "total_annotations": 0},
             {"id": 2, "total_annotations": 2}]
    assert [t["id"] for t in jobs.task_order(tasks)] == [1, 5, 2, 3]


@pytest.mark.slow
def test_train_promote_predict_through_a_real_worker(redis_conn, fake_ls, loop_env, monkeypatch):
    from shoeseg_services.registry import ModelRegistry

    first = trigger.request_training(redis_conn, 1, reason="test", settings=loop_env)
    work(redis_conn, TRAIN_QUEUE)
    job = Job.fetch(first["job_id"], connection=redis_conn)
    assert job.get_status() == JobStatus.FINISHED, job.meta.get("error")
    result = job.return_value()
    assert result["promoted"] and result["decision"] == "no current version"
    assert result["train_tasks"] + result["val_tasks"] == 3 and result["val_tasks"] >= 1
    assert job.meta["stage"] == "done" and job.meta["iteration"] == 1 and "total_loss" in job.meta["losses"]
    registry = ModelRegistry(loop_env.model_dir)
    version = registry.current()
    assert version.version == result["version"]
    assert version.meta["task_ids"] == [100, 102, 104]
    assert version.meta["annotation_ids"] == {"100": 1100, "102": 1102, "104": 1104}
    assert version.meta["validation"] == "task-id hash"  # the first version's
    assert "segm_AP" in version.metrics
    # what an annotator would edit on its validation images, measured by its own evaluation
    annotator = version.recorded("annotator")
    assert annotator["n_images"] == result["val_tasks"] and annotator["n_truth"] >= result["val_tasks"]
    from shoeseg.checkpoint import read_checkpoint_meta

    assert annotator["score_thresh"] == read_checkpoint_meta(version.checkpoint)["serve_score_thresh"]
    # exported for serving before it was promoted (ONNX Runtime serves on CPU when installed)
    from shoeseg.runtime import onnx_path_beside, resolve_runtime

    if resolve_runtime(loop_env.runtime, "cpu") == "onnx":
        assert any(onnx_path_beside(version.checkpoint, int8=q).is_file() for q in (False, True))
    assert trigger.training_state(redis_conn, 1)["state"] == "idle"
    assert not list((loop_env.cache_dir / "runs" / "1").iterdir())  # the run dir is gone

    # the promotion queued the predictions
    assert Queue(PREDICT_QUEUE, connection=redis_conn).job_ids == [result["predict_job_id"]]
    work(redis_conn, PREDICT_QUEUE)
    pjob = Job.fetch(result["predict_job_id"], connection=redis_conn)
    assert pjob.get_status() == JobStatus.FINISHED, pjob.meta.get("error")
    assert [p["task"] for p in fake_ls.pushed] == [101, 103, 105, 100, 102, 104]  # unlabelled first
    assert {p["model_version"] for p in fake_ls.pushed} == {version.version}
    assert fake_ls.model_version == version.version
    stages = pjob.return_value()["stage_seconds"]  # where the push's time went, summing to its seconds
    assert list(stages) == ["setup", "images", "model", "store", "finish"] and min(stages.values()) >= 0
    assert abs(sum(stages.values()) - pjob.return_value()["seconds"]) < 0.01
    # the vertex budget (SHOESEG_POLYGON_MAX_VERTICES=6) holds, and the backend's /predict writes the same
    # result and the same task score for the same task and model
    points = [len(r["value"]["points"]) for p in fake_ls.pushed for r in p["result"] if r["type"] == "polygonlabels"]
    assert all(3 <= n <= 6 for n in points)
    assert_backend_agrees(fake_ls, loop_env, version.version)

    # a retried predict job pushes nothing twice
    for t in fake_ls.tasks:
        t["predictions"] = [p for p in fake_ls.pushed if p["task"] == t["id"]]
    again = jobs.predict_project(1, version=version.version)
    assert again["pushed"] == 0 and again["already_there"] == 6

    # nothing new since the current version: no round is trained
    same = trigger.request_training(redis_conn, 1, reason="again", settings=loop_env)
    work(redis_conn, TRAIN_QUEUE)
    skipped = Job.fetch(same["job_id"], connection=redis_conn).return_value()
    assert "no new or changed label since version" in skipped["skipped"] and len(registry.versions()) == 1

    # a second training that cannot beat the current one (a gate that asks for 2 AP more than the current
    # version's mean) stays a candidate, and its evidence is recorded
    fake_ls.tasks[1]["total_annotations"] = 1  # a new label
    monkeypatch.setenv("SHOESEG_PROMOTE_TOLERANCE", "-2")
    second = trigger.request_training(redis_conn, 1, reason="again", settings=loop_env)
    work(redis_conn, TRAIN_QUEUE)
    res2 = Job.fetch(second["job_id"], connection=redis_conn).return_value()
    assert res2["promoted"] is False and "worse on average" in res2["decision"]
    assert registry.current().version == version.version
    candidate = registry.get(res2["version"])
    assert candidate.status == "candidate" and candidate.parent == version.version
    gate = candidate.meta["gate"]
    assert gate["compared_on"] == res2["val_tasks"] >= 1 and gate["ci_low"] <= gate["diff"] <= gate["ci_high"]
    assert candidate.meta["kind"] == "round" and candidate.meta["decision"] == res2["decision"]
    assert candidate.meta["validation"] == "newest labels"


def test_a_round_that_is_genuinely_worse_on_the_validation_images_is_never_promoted(redis_conn, fake_ls, loop_env,
                                                                                      tmp_path, monkeypatch):
    """No tolerance: the default gate against a candidate the evidence says is worse.

    The current version is a hand-made model, and every label is what it predicted on that image (an annotator
    who accepted its pre-labels as they were), so it scores AP 1 on any validation image. The worker's round
    fine-tunes it for an iteration at a destructive learning rate (``SHOESEG_BASE_LR=50``: the warm-up's first
    step, at a thousandth of it, moves every weight by about 0.05, as a step of Adam does not scale with the
    gradient), at the current version's input size. The candidate is also built with the profile's proposal
    and detection settings, which alone move its boxes off the hand-made model's (AP 0.02 at a rate of 1e-9,
    tried): a worse model either way, AP about 0 where the current version scores 1."""
    from shoeseg.predict import Predictor
    from shoeseg_services.registry import ModelRegistry
    from tests.helpers import make_checkpoint
    from via_tools.images import read_image
    from via_tools.model import Region

    good = make_checkpoint(tmp_path / "good.pt", version="good-v1", fg_logit=4.0, detections=3, seed=1,
                           size_px=96, anchor_boxes=True)
    predictor = Predictor.from_checkpoint(good, device="cpu", score_thresh=0.5)
    for im in fake_ls.ds.images:
        best = max(predictor.predict([read_image(fake_ls.images_dir / im.file_name)])[0], key=lambda d: d.score)
        im.regions[:] = [Region(label="shoe", polygons=best.polygons, region_id="kept")]
    registry = ModelRegistry(loop_env.model_dir)
    registry.register(good, metrics={}, parent=None, meta={"project": 1})
    registry.promote("good-v1")
    monkeypatch.delenv("SHOESEG_PROMOTE_TOLERANCE", raising=False)
    monkeypatch.setenv("SHOESEG_BASE_LR", "50")
    monkeypatch.setenv("SHOESEG_MIN_SIZE", "96")
    monkeypatch.setenv("SHOESEG_MAX_SIZE", "96")
    queued = trigger.request_training(redis_conn, 1, reason="worse", settings=Settings.from_env())
    work(redis_conn, TRAIN_QUEUE)
    job = Job.fetch(queued["job_id"], connection=redis_conn)
    assert job.get_status() == JobStatus.FINISHED, job.meta.get("error")
    res = job.return_value()
    gate = registry.get(res["version"]).meta["gate"]
    assert res["promoted"] is False and registry.current_version_id() == "good-v1"
    assert gate["compared_on"] == res["val_tasks"] >= 1
    assert gate["current_mean"] > 0.9 and gate["new_mean"] < 0.5, gate
    assert gate["ci_high"] < 0, gate  # the whole interval below 0: worse on the evidence
    assert "worse" in res["decision"], res["decision"]
    assert not Queue(PREDICT_QUEUE, connection=redis_conn).count  # nothing of it is pushed


def test_a_first_model_over_its_time_budget_records_the_iterations_it_ran(redis_conn, fake_ls, loop_env,
                                                                          monkeypatch):
    from shoeseg.train import PROFILES
    from shoeseg_services.registry import ModelRegistry

    # the profile's schedule (shortened here to 24 iterations) planned, a budget nothing fits in: cut to half of
    # it at iteration 10
    monkeypatch.setitem(PROFILES["cpu"], "iters", 24)
    monkeypatch.setitem(PROFILES["cpu"], "warmup_iters", 4)
    monkeypatch.delenv("SHOESEG_TRAIN_ITERS")
    monkeypatch.setenv("SHOESEG_PROFILE", "cpu")
    monkeypatch.setenv("SHOESEG_TRAIN_BUDGET_S", "0.001")
    settings = Settings.from_env()
    first = trigger.request_training(redis_conn, 1, reason="test", settings=settings)
    work(redis_conn, TRAIN_QUEUE)
    job = Job.fetch(first["job_id"], connection=redis_conn)
    assert job.get_status() == JobStatus.FINISHED, job.meta.get("error")
    assert job.meta["iteration"] == 12
    version = ModelRegistry(settings.model_dir).current()
    assert version.meta["train_config"]["iters"] == 12 and version.meta["train_config"]["time_budget_s"] == 0.001
    budget = version.meta["time_budget"]
    assert (budget["planned_iters"], budget["iters"], budget["decided_at"]) == (24, 12, 10)


def test_label_studio_unreachable_is_retried_then_fails_with_the_reason(redis_conn, loop_env):
    queued = trigger.request_training(redis_conn, 9, reason="test", settings=loop_env)
    work(redis_conn, TRAIN_QUEUE)
    job = Job.fetch(queued["job_id"], connection=redis_conn)
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 0 and job.meta["transient"] is True
    assert "cannot reach Label Studio at http://127.0.0.1:9" in job.meta["error"]
    assert queued["job_id"] in FailedJobRegistry(TRAIN_QUEUE, connection=redis_conn).get_job_ids()
    assert job.meta["attempts"] == 3  # the first run and two retries
    assert "LabelStudioUnavailable" in job.latest_result().exc_string
    assert trigger.training_state(redis_conn, 9)["state"] == "idle"  # the next event starts afresh
    assert trigger.request_training(redis_conn, 9, reason="again", settings=loop_env)["action"] == "queued"


def test_bad_annotations_fail_at_once_without_retries(redis_conn, fake_ls, loop_env):
    for t in fake_ls.tasks:
        t["total_annotations"] = 1
    for im in fake_ls.ds.images:
        im.regions = []  # annotations without any polygon: nothing to learn
    queued = trigger.request_training(redis_conn, 1, reason="test", settings=loop_env)
    work(redis_conn, TRAIN_QUEUE)
    job = Job.fetch(queued["job_id"], connection=redis_conn)
    assert job.get_status() == JobStatus.FAILED
    assert "no labelled instances" in job.meta["error"] and job.meta["transient"] is False
    assert job.meta["attempts"] == 1


def test_a_fine_tuning_round_is_sized_to_what_is_new(monkeypatch):
    from worker.training import new_images, train_config

    settings = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_DEVICE": "cpu"})
    first = train_config(settings, weights="none", init_from=None, seed=0, new=30)
    assert first.iters == 200 and first.base_lr == 2e-4  # the first model: the profile's full schedule
    assert train_config(settings, weights=None, init_from="m.pt", seed=0, new=3).iters == 40  # the floor
    round_10 = train_config(settings, weights=None, init_from="m.pt", seed=0, new=10)
    assert round_10.iters == 120 and round_10.warmup_iters <= 24 and round_10.init_from == "m.pt"
    assert round_10.base_lr == 1e-4  # half the recipe's rate
    assert train_config(settings, weights=None, init_from="m.pt", seed=0, new=30).iters == 200  # the full schedule
    fixed = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_TRAIN_ITERS": "7"})
    assert train_config(fixed, weights=None, init_from="m.pt", seed=0, new=30).iters == 7  # the variable wins

    current = SimpleNamespace(meta={"annotation_ids": {"1": 10, "2": 20}})
    ds = SimpleNamespace(images=[SimpleNamespace(image_id="1", extra={"ls_annotation_id": 10}),
                                 SimpleNamespace(image_id="2", extra={"ls_annotation_id": 21}),  # corrected
                                 SimpleNamespace(image_id="3", extra={"ls_annotation_id": 30})])  # new
    assert new_images(ds, current) == 2 and new_images(ds, None) == 3


def test_a_round_on_a_slow_machine_is_cut_to_its_time_budget_and_keeps_its_parents_size():
    from worker.training import parent_seconds_per_iter, train_config

    settings = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_DEVICE": "cpu"})
    assert settings.round_budget_s == 360
    # an idle chunk enlarged the parent to 512 px, where an iteration took 5.8 s
    slow = {"train_config": {"min_size": 512, "max_size": 853}, "final_losses": {"time": 5.8}}
    cut = train_config(settings, weights=None, init_from="m.pt", seed=0, new=10, parent_meta=slow)
    assert (cut.min_size, cut.max_size) == (512, 853)
    assert cut.iters == 62 and cut.base_lr == 1e-4  # 360 s // 5.8 s, at the round's half rate
    assert cut.resolved_steps() == (46, 56) and cut.warmup_iters == 12  # the schedule follows the cut
    # a fast machine (or an unknown cost) keeps the rule's 120; a very slow one keeps the floor of 40
    fast = {"train_config": {"min_size": 384}, "final_losses": {"time": 0.2}}
    assert train_config(settings, weights=None, init_from="m.pt", seed=0, new=10, parent_meta=fast).iters == 120
    assert train_config(settings, weights=None, init_from="m.pt", seed=0, new=10, parent_meta={}).iters == 120
    crawl = {"train_config": {"min_size": 384}, "final_losses": {"time": 60.0}}
    assert train_config(settings, weights=None, init_from="m.pt", seed=0, new=10, parent_meta=crawl).iters == 40
    # no budget, or the iterations fixed: the rule or the variable
    unbounded = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_ROUND_BUDGET_S": "0"})
    assert train_config(unbounded, weights=None, init_from="m.pt", seed=0, new=10, parent_meta=slow).iters == 120
    # the parent's cost is scaled by the pixels to the round's size
    assert parent_seconds_per_iter(slow, min_size=256) == pytest.approx(5.8 / 4)
    assert parent_seconds_per_iter({"final_losses": {"time": 5.8}}, min_size=384) is None  # size unknown
    # a round fine-tunes on its budget decided up front; it runs without an in-run budget of its own
    assert cut.time_budget_s == 0


def test_a_full_training_runs_with_the_train_budget_unless_the_iterations_are_fixed():
    from worker.training import train_config

    first = train_config(Settings.from_env({"SHOESEG_PROFILE": "cpu"}), weights=None, init_from=None, seed=0)
    assert (first.iters, first.time_budget_s) == (200, 780)  # the profile's schedule, cut while it runs
    assert train_config(Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_TRAIN_BUDGET_S": "0"}),
                        weights=None, init_from=None, seed=0).time_budget_s == 0
    fixed = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_TRAIN_ITERS": "50"})
    assert (train_config(fixed, weights=None, init_from=None, seed=0).iters,
            train_config(fixed, weights=None, init_from=None, seed=0).time_budget_s) == (50, 0)
    with pytest.raises(SettingsError, match="SHOESEG_TRAIN_BUDGET_S"):
        Settings.from_env({"SHOESEG_TRAIN_BUDGET_S": "soon"})
