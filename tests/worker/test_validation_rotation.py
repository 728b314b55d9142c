"""Which tasks judge a version: the first version's hash subset, then the newest labels (rotation).

A project is played forward version by version with :func:`worker.training.split_labels` (the function the
round and the idle chunk call), each version's metadata written as :func:`worker.training.register_and_promote`
writes it (``task_ids``, ``val_task_ids``, ``annotation_ids``).
"""

from __future__ import annotations

from types import SimpleNamespace

from shoeseg_services.settings import Settings, SettingsError
from via_tools.model import AnnotationSet, ImageRecord
from worker.promotion import rotate_validation, validation_task_ids
from worker.training import new_images, new_to_training, split_labels


def _project(n: int, *, first: int = 1) -> AnnotationSet:
    """``n`` labelled tasks, ids ``first..first+n-1``; annotation ids grow with the label's time (task id x 10)."""
    return AnnotationSet(images=[ImageRecord(file_name=f"{i}.jpg", image_id=str(i),
                                             extra={"ls_annotation_id": 10 * i}) for i in range(first, first + n)],
                         labels=["shoe"])


def _version(ds: AnnotationSet, val: AnnotationSet) -> SimpleNamespace:
    return SimpleNamespace(meta={"task_ids": [int(im.image_id) for im in ds.images],
                                 "val_task_ids": sorted(int(im.image_id) for im in val.images),
                                 "annotation_ids": {im.image_id: im.extra["ls_annotation_id"] for im in ds.images}})


def _ids(ds: AnnotationSet) -> set[str]:
    return {im.image_id for im in ds.images}


def _grow(settings: Settings, *, start: int, batch: int, rounds: int):
    """The project from ``start`` labels, ``batch`` more before each later version; yields (ds, train, val)."""
    ds = _project(start)
    train, val = split_labels(ds, settings, None)
    yield ds, train, val
    current = _version(ds, val)
    for r in range(1, rounds):
        ds = _project(start + r * batch)
        train, val = split_labels(ds, settings, current)
        yield ds, train, val
        current = _version(ds, val)


def test_no_version_is_judged_on_an_image_either_version_trained_on_and_the_size_follows_the_hash_subset():
    settings = Settings.from_env({})
    assert settings.val_rotation == "newest"
    current = None
    for ds, train, val in _grow(settings, start=50, batch=10, rounds=8):
        ids = [im.image_id for im in ds.images]
        assert _ids(train) | _ids(val) == set(ids) and not _ids(train) & _ids(val)
        assert len(val) == len(validation_task_ids(ids, modulo=settings.val_modulo, max_size=settings.val_max))
        if current is not None:
            current_trained = {str(t) for t in current.meta["task_ids"]} - {str(t) for t in current.meta["val_task_ids"]}
            assert not _ids(val) & current_trained
        current = _version(ds, val)


def test_rotation_moves_every_validation_task_into_training_and_fixed_keeps_the_hash_subset_for_good():
    rounds = list(_grow(Settings.from_env({}), start=50, batch=10, rounds=8))
    first_val = _ids(rounds[0][2])
    assert first_val and len(first_val) < 50
    last_ds, last_train, last_val = rounds[-1]
    assert first_val <= _ids(last_train)  # every label the first version held out trains now
    assert _ids(last_val) == {str(i) for i in range(121 - len(last_val), 121)}  # the newest labels judge

    fixed = list(_grow(Settings.from_env({"SHOESEG_VAL_ROTATION": "fixed"}), start=50, batch=10, rounds=8))
    assert _ids(fixed[0][2]) == first_val  # the first version is the same either way
    assert first_val <= _ids(fixed[-1][2])  # held out for good
    assert len(fixed[-1][2]) == len(last_val)


def test_without_new_labels_the_validation_tasks_stay_and_a_version_is_not_sized_by_them():
    settings = Settings.from_env({})
    ds = _project(40)
    train, val = split_labels(ds, settings, None)
    current = _version(ds, val)
    again_train, again_val = split_labels(ds, settings, current)  # an idle chunk: the same labels
    assert _ids(again_val) == _ids(val) and _ids(again_train) == _ids(train)
    assert new_images(ds, current) == 0 and new_to_training(again_train, current) == 0

    grown = _project(45)  # 5 new labels: they judge, as many of the oldest validation tasks train
    g_train, g_val = split_labels(grown, settings, current)
    moved = _ids(val) - _ids(g_val)
    assert {str(i) for i in range(41, 46)} <= _ids(g_val) and moved <= _ids(g_train)
    assert all(int(t) < int(u) for t in moved for u in _ids(val) & _ids(g_val))  # the oldest move
    assert new_images(grown, current) == 5
    assert new_to_training(g_train, current) == len(moved) + len({str(i) for i in range(41, 46)} - _ids(g_val))


def test_a_corrected_label_the_current_version_trained_on_trains_again_and_never_judges():
    settings = Settings.from_env({})
    ds = _project(30)
    train, val = split_labels(ds, settings, None)
    current = _version(ds, val)
    corrected = next(im for im in ds.images if im.image_id in _ids(train))
    corrected.extra["ls_annotation_id"] = 10_000  # edited after every other label
    c_train, c_val = split_labels(ds, settings, current)
    assert corrected.image_id in _ids(c_train) and _ids(c_val) == _ids(val)
    assert new_images(ds, current) == 1 and new_to_training(c_train, current) == 1


def test_rotate_validation_orders_by_the_labels_time_and_keeps_one_task_training():
    ids = [str(i) for i in range(1, 7)]
    # task 2 was labelled last (annotation id 99): age is the label's, not the task's
    age = {t: int(t) for t in ids} | {"2": 99}
    assert rotate_validation(ids, held={"2", "3"}, trained={"1"}, size=2, age=age) == {"2", "6"}
    assert rotate_validation(ids, held=set(), trained=set(), size=6) == set(ids) - {"1"}
    assert rotate_validation(ids, held=set(), trained=set(ids), size=3) == set()


def test_the_rotation_setting_is_checked():
    assert Settings.from_env({"SHOESEG_VAL_ROTATION": "fixed"}).val_rotation == "fixed"
    try:
        Settings.from_env({"SHOESEG_VAL_ROTATION": "oldest"})
    except SettingsError as e:
        assert "SHOESEG_VAL_ROTATION" in str(e)
    else:
        raise AssertionError("an unknown rotation was accepted")
