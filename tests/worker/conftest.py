"""The worker's tests: a tiny recipe, and a small in-memory stand-in for Label Studio's client.

Everything else the jobs touch is real: rq, Redis (``redis_conn``), training, evaluation, the registry, the
image cache. The end-to-end tests in tests/e2e use the real Label Studio.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from shoeseg_services.settings import Settings
from tests.synth import make_images
from via_tools.labelstudio import labeling_config

TINY = {
    "SHOESEG_IDLE_TRAINING": "false", "SHOESEG_POLYGON_MAX_VERTICES": "6", "SHOESEG_TRAIN_ITERS": "1", "SHOESEG_MIN_SIZE": "64", "SHOESEG_MAX_SIZE": "96", "SHOESEG_ROI_BATCH": "32",
    "SHOESEG_INIT_WEIGHTS": "none", "SHOESEG_DEVICE": "cpu", "SHOESEG_RETRY_MAX": "2",
    "SHOESEG_RETRY_INTERVALS": "0", "SHOESEG_PREDICT_BATCH": "3",
}


@pytest.fixture
def loop_env(tmp_path, monkeypatch):
    env = {**TINY, "SHOESEG_MODEL_DIR": str(tmp_path / "models"), "SHOESEG_CACHE_DIR": str(tmp_path / "cache"),
           "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "test-key"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings.from_env()


class FakeProject(SimpleNamespace):
    pass


class FakeLabelStudio:
    """Holds tasks in memory and records what the job stores (stand-in for the SDK client)."""

    def __init__(self, images_dir: Path, ds):
        self.images_dir = images_dir
        self.tasks = []
        for k, im in enumerate(ds.images):
            self.tasks.append({"id": 100 + k, "data": {"image": f"/data/upload/1/{im.file_name}"},
                               "total_annotations": 1 if k % 2 == 0 else 0, "predictions": []})
        self.ds = ds
        self.pushed: list[dict] = []
        self.model_version = None
        config = labeling_config(["shoe"])
        self.projects = SimpleNamespace(
            get=lambda id: FakeProject(id=id, label_config=config),
            import_predictions=lambda id, request: self.pushed.extend(request),
            update=lambda id, model_version: setattr(self, "model_version", model_version),
        )

    def annotated(self):
        from via_tools.model import AnnotationSet, ImageRecord

        images = []
        for t, im in zip(self.tasks, self.ds.images, strict=True):
            if t["total_annotations"]:
                images.append(ImageRecord(file_name=im.file_name, width_px=im.width_px, height_px=im.height_px,
                                          regions=im.regions, image_id=str(t["id"]),
                                          extra={"ls_image": t["data"]["image"], "ls_task_id": t["id"],
                                                 "ls_annotation_id": 1000 + t["id"]}))
        return AnnotationSet(images=images, labels=["shoe"])


def use_fake_ls(ls: FakeLabelStudio, monkeypatch) -> FakeLabelStudio:
    """Points the jobs' Label Studio client, label reader, task lister and image source at ``ls``."""
    src = ls.images_dir
    monkeypatch.setattr("shoeseg_services.ls_api.connect", lambda url, api_key, **kw: ls)
    monkeypatch.setattr("worker.training.connect", lambda url, api_key, **kw: ls)
    monkeypatch.setattr("shoeseg_services.ls_api.accepted_annotations", lambda client, project_id: ls.annotated())
    monkeypatch.setattr("shoeseg_services.ls_api.list_tasks", lambda client, project_id: [dict(t) for t in ls.tasks])
    monkeypatch.setattr("shoeseg_services.fetch.ImageFetcher._from_label_studio",
                        lambda self, url, **kw: (src / url.rsplit("/", 1)[-1]).read_bytes())
    return ls


@pytest.fixture
def fake_ls(tmp_path, monkeypatch, loop_env):
    src = tmp_path / "src"
    return use_fake_ls(FakeLabelStudio(src, make_images(src, 6)), monkeypatch)


