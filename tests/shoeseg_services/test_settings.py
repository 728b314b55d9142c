"""The one settings module: every variable validated at start-up, with the variable and the value named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoeseg_services.settings import AL_STRATEGIES, PROFILES, Settings, SettingsError


@pytest.mark.parametrize("name, value, message", [
    ("SHOESEG_MIN_NEW_ANNOTATIONS", "zero", "is not an integer"),
    ("SHOESEG_MIN_NEW_ANNOTATIONS", "0", "must be at least 1"),
    ("MIN_NEW_ANNOTATIONS", "-3", "must be at least 1"),
    ("SHOESEG_SCORE_THRESH", "1.5", "must be between 0.0 and 1.0"),
    ("SHOESEG_SCORE_THRESH", "nan", "must be between 0.0 and 1.0"),
    ("SHOESEG_AL_STRATEGY", "entropyy", "is not one of"),
    ("SHOESEG_PROFILE", "fast", "is not one of"),
    ("SHOESEG_DEVICE", "tpu", "is not one of"),
    ("SHOESEG_TRAIN_ITERS", "0", "must be at least 1"),
    ("SHOESEG_BASE_LR", "-0.1", "must be at least 0.0"),
    ("SHOESEG_PROMOTE_TOLERANCE", "some", "is not a number"),
    ("SHOESEG_RETRY_INTERVALS", "10,x", "comma-separated list of integers"),
    ("SHOESEG_INSECURE", "maybe", "is not a boolean"),
    ("LABEL_STUDIO_URL", "localhost:8080", "is not an http(s) URL"),
    ("LABEL_STUDIO_URL", "http://me:pw@ls:8080", "must not hold a user or password"),
    ("SHOESEG_ALLOWED_HOSTS", "https://images.example.org", "expected host"),
    ("SHOESEG_MAX_TASKS_PER_REQUEST", "0", "must be at least 1"),
])
def test_a_bad_value_is_refused_at_start_up_naming_the_variable_and_the_value(name, value, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as e:
        Settings.from_env({name: value})
    assert name in str(e.value)
    if "user or password" not in message:  # a URL with a password is not repeated back
        assert repr(value) in str(e.value) or value in str(e.value)


def test_defaults_and_the_shared_reading():
    s = Settings.from_env({})
    assert s.model_dir == Path("models") and s.cache_dir == Path(".cache/shoeseg")
    assert (s.min_new_annotations, s.score_thresh, s.al_strategy, s.profile) == (10, None, "flip_consistency", "auto")  # None: the checkpoint's threshold
    assert s.train_overrides() == {}
    assert s.promote_tolerance is None  # the gate's interval alone decides
    assert Settings.from_env({"SHOESEG_PROMOTE_TOLERANCE": "-0.02"}).promote_tolerance == -0.02
    # an empty environment reads each field's own default (written once, on the field): only the cache differs
    assert s == Settings(cache_dir=Path(".cache/shoeseg"))
    # the legacy name still counts; the new one wins when both are set
    assert Settings.from_env({"MIN_NEW_ANNOTATIONS": "3"}).min_new_annotations == 3
    assert Settings.from_env({"MIN_NEW_ANNOTATIONS": "3", "SHOESEG_MIN_NEW_ANNOTATIONS": "4"}).min_new_annotations == 4


def test_training_overrides_are_only_what_the_environment_sets():
    s = Settings.from_env({"SHOESEG_TRAIN_ITERS": "7", "SHOESEG_MIN_SIZE": "64", "SHOESEG_BASE_LR": "0.001"})
    assert s.train_overrides() == {"iters": 7, "min_size": 64, "base_lr": 0.001}


def test_the_overrides_fill_the_same_training_configuration_as_the_command_line():
    from shoeseg.train import TrainConfig

    s = Settings.from_env({"SHOESEG_PROFILE": "cpu", "SHOESEG_TRAIN_ITERS": "7", "SHOESEG_ROI_BATCH": "32"})
    config = TrainConfig.for_profile(s.profile, device="cpu", **s.train_overrides())
    assert (config.iters, config.roi_batch_size_per_image) == (7, 32)
    assert config.arch == TrainConfig.for_profile("cpu", device="cpu").arch  # the rest from the profile


def test_the_names_checked_here_are_the_ones_the_core_knows():
    from shoeseg.active_learning import STRATEGIES
    from shoeseg.train import PROFILES as TRAIN_PROFILES

    assert set(AL_STRATEGIES) == set(STRATEGIES)
    assert set(PROFILES) == {"auto", *TRAIN_PROFILES}


def test_the_mask_steps_are_read_for_backend_and_worker_alike(caplog):
    assert Settings.from_env({}).output_options()["mask_refine"] == pytest.approx(0.04)
    s = Settings.from_env({"SHOESEG_MASK_REFINE": "0", "SHOESEG_MASK_RESCORE": "true", "SHOESEG_SCORE_THRESH": "0.3"})
    assert (s.output_options()["mask_refine"], s.output_options()["mask_rescore"]) == (0.0, True)
    with pytest.raises(SettingsError, match="SHOESEG_MASK_REFINE"):
        Settings.from_env({"SHOESEG_MASK_REFINE": "0.9"})
    with caplog.at_level("WARNING"):
        Settings.from_env({"SHOESEG_MASK_RESCORE": "1"})
    assert "set SHOESEG_SCORE_THRESH" in caplog.text


class _Recording(dict):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self):
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def test_the_settings_table_names_every_variable_that_is_read():
    import shoeseg_services.settings as module

    env = _Recording()
    Settings.from_env(env)
    read = set(env.asked)
    assert len(read) > 30 and "REDIS_URL" in read  # the recording saw the reads
    table = module.__doc__
    families = re.findall(r"``([A-Z_]+)\*``", table)  # e.g. SHOESEG_MAX_* for the request limits
    missing = sorted(n for n in read if f"``{n}``" not in table and not any(n.startswith(f) for f in families))
    assert not missing, f"not in the table of shoeseg_services/settings.py: {missing}"
