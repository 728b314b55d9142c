"""The promoted model of the backend, loaded once per process and swapped when another version is promoted.

:class:`ModelCache` checks the registry's ``current`` pointer (one small file read) at most every
``reload_interval_s`` and loads a newly promoted version in the request that notices it, while other requests
keep using the old one. On an S3 registry the check is one small LIST request, and a version's checkpoint is
downloaded once per machine (``<SHOESEG_CACHE_DIR>/models/<sha256>.pt``, see :mod:`shoeseg_services.registry`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.metrics import Metrics
from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    version: str
    predictor: Any
    class_names: list[str]
    loaded_at: float = field(default_factory=time.time)


class ModelCache:
    """The promoted registry version, loaded once and swapped when another version is promoted.

    Args:
        settings: registry root, device, score threshold, polling interval.
        metrics: where model loads are counted.
        loader: ``(checkpoint_path, version) -> predictor`` (default :func:`shoeseg.runtime.load_predictor` in ``SHOESEG_RUNTIME``).

    Example:
        >>> cache = ModelCache(Settings(model_dir=Path("models")), metrics=Metrics())  # doctest: +SKIP
        >>> cache.current().version  # doctest: +SKIP
        '20250101-120000-3fa2c1'
    """

    def __init__(self, settings: Settings, *, metrics: Metrics, loader=None):
        from shoeseg_services.registry import ModelRegistry

        self.settings = settings
        self.registry = ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir)
        self.metrics = metrics
        self._loader = loader or self._load_predictor
        self._loaded: LoadedModel | None = None
        self._reason = f"no model checked yet in {settings.model_dir}"
        self._last_check = -math.inf
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}
        self._loading: str | None = None

    def _load_predictor(self, checkpoint, version: str):
        from shoeseg.runtime import load_predictor

        return load_predictor(
            checkpoint, runtime=self.settings.runtime, device=self.settings.device,
            score_thresh=self.settings.score_thresh, batch_size=self.settings.batch_size,
            **self.settings.output_options(),
        )

    @property
    def reason(self) -> str | None:
        """Why no model is served (``None`` when one is)."""
        return None if self._loaded is not None else self._reason

    def current(self, *, wait: bool = True) -> LoadedModel | None:
        """The model to serve now; checks the registry pointer when ``reload_interval_s`` has passed.

        With ``wait=False`` (``/health``) a first model is loaded in the background instead of in this call,
        so that a liveness check never waits for a checkpoint to load; ``reason`` says it is loading.
        """
        if time.monotonic() - self._last_check >= self.settings.reload_interval_s:
            self.refresh(block=self._loaded is None and wait, background=not wait)
        return self._loaded

    def refresh(self, *, block: bool = True, background: bool = False) -> None:
        """Checks the registry pointer; loads a newly promoted version.

        With no model held, the load happens here (callers wait for it) unless ``background``; otherwise in
        a background thread while the old version keeps serving, and it is swapped in when ready.
        """
        from shoeseg_services.registry import RegistryError

        if not self._lock.acquire(blocking=block):
            return
        try:
            self._last_check = time.monotonic()
            try:
                wanted = self.registry.current_version_id()
            except (OSError, RegistryError) as e:  # RegistryError: an S3 registry that cannot be read
                self._reason = f"cannot read the model registry at {self.settings.model_dir}: {e}"
                log.error(self._reason)
                return
            if wanted is None:
                if self._loaded is not None:
                    log.warning("the registry at %s has no promoted version any more; serving none",
                                self.settings.model_dir)
                self._loaded = None
                self._reason = (
                    f"no trained model yet: the registry at {self.settings.model_dir} has no promoted version "
                    "(train one with `shoeseg train` and promote it, or let the worker train on accepted labels)"
                )
                return
            if self._loaded is not None and self._loaded.version == wanted:
                return
            if wanted in self._failed or wanted == self._loading:
                return
            if self._loaded is None and not background:
                self._load(wanted)
            else:
                if self._loaded is None:
                    self._reason = f"loading model version {wanted}"
                self._loading = wanted
                threading.Thread(target=self._load_in_background, args=(wanted,), daemon=True,
                                 name=f"shoeseg-load-{wanted}").start()
        finally:
            self._lock.release()

    def _load_in_background(self, version: str) -> None:
        try:
            self._load(version)
        finally:
            self._loading = None

    def _load(self, version: str) -> None:
        from shoeseg_services.registry import RegistryError

        started = time.perf_counter()
        try:
            mv = self.registry.get(version)
            predictor = self._loader(mv.checkpoint, mv.version)
            # One small forward pass so that the first request does not pay for lazy initialisation.
            predictor.predict([np.zeros((64, 64, 3), np.uint8)])
        except (RegistryError, OSError, ValueError, RuntimeError, KeyError) as e:
            self._failed[version] = str(e)
            self.metrics.model_loads.labels(outcome="failed").inc()
            kept = f"; still serving {self._loaded.version}" if self._loaded else ""
            self._reason = f"model version {version} could not be loaded: {e}"
            log.error("model version %s could not be loaded: %s%s", version, e, kept)
            return
        previous = self._loaded.version if self._loaded else None
        self._loaded = LoadedModel(version=mv.version, predictor=predictor, class_names=list(predictor.class_names))
        self.metrics.model_loads.labels(outcome="loaded").inc()
        self.metrics.set_model_version(mv.version)
        log.info("serving model version %s (was %s), loaded in %.2f s on %s", mv.version, previous,
                 time.perf_counter() - started, getattr(predictor, "device", "?"))
