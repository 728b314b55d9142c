"""The backend's model cache: a liveness check never waits for a checkpoint to load."""

from __future__ import annotations

import threading
import time

from backend.metrics import Metrics
from backend.model_cache import ModelCache
from shoeseg_services.settings import Settings
from tests.helpers import new_registry


class _SlowPredictor:
    class_names = ["shoe"]
    device = "cpu"

    def predict(self, images):
        return [[] for _ in images]


def test_a_first_model_loads_in_the_background_for_health_and_in_the_call_for_predictions(tmp_path, checkpoints):
    reg = new_registry(tmp_path / "models", checkpoints, promote=None)
    release, started = threading.Event(), threading.Event()

    def loader(checkpoint, version):
        started.set()
        assert release.wait(30), "the test never released the load"
        return _SlowPredictor()

    cache = ModelCache(Settings(model_dir=reg.root, device="cpu", reload_interval_s=0.0), metrics=Metrics(),
                       loader=loader)
    assert cache.current(wait=False) is None and "no trained model yet" in cache.reason
    reg.promote("test-v1")
    t0 = time.monotonic()
    assert cache.current(wait=False) is None  # answers at once while the load runs elsewhere
    assert time.monotonic() - t0 < 5 and started.wait(10)
    assert cache.reason == "loading model version test-v1"
    assert cache.current(wait=False) is None  # a second check starts no second load
    release.set()
    deadline = time.monotonic() + 30
    while (loaded := cache.current(wait=False)) is None:
        assert time.monotonic() < deadline, cache.reason
        time.sleep(0.05)
    assert loaded.version == "test-v1" and cache.reason is None

    # a prediction request with no model held waits for the load instead
    calls = []
    fresh = ModelCache(Settings(model_dir=reg.root, device="cpu", reload_interval_s=0.0), metrics=Metrics(),
                       loader=lambda c, v: calls.append(v) or _SlowPredictor())
    assert fresh.current().version == "test-v1" and calls == ["test-v1"]
