"""A Label Studio project's work: its set-up with the ML backend, its tasks and predictions, what to label next.

* project set-up (:func:`setup_project`), its labeling config (:func:`label_config_of`,
  :func:`project_polygon_control`), tasks (:func:`list_tasks`) and annotations (:func:`get_annotation`);
* predictions (:func:`push_predictions`, :func:`delete_predictions`, :func:`task_predictions`), the project's
  model version (:func:`project_model_version`, :func:`set_model_version`) and the next tasks to label
  (:func:`select_next`, by :func:`task_score`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shoeseg_services.ls_api.connection import calls
from shoeseg_services.ls_config import polygon_control
from via_tools.labelstudio import labeling_config

log = logging.getLogger(__name__)


def list_tasks(client: Any, project_id: int) -> list[dict[str, Any]]:
    """Every task of a project with its annotations and predictions, as plain dicts."""
    with calls(client, f"list the tasks of project {project_id}"):
        return [t.model_dump(mode="json") for t in client.tasks.list(project=project_id, fields="all", page_size=100)]


def get_annotation(client: Any, annotation_id: int) -> dict[str, Any] | None:
    """One annotation as a plain dict (``result``, ``task``, ``was_cancelled``, ``parent_prediction``,
    ``created_at``...), or ``None`` when it no longer exists."""
    from label_studio_sdk.core.api_error import ApiError

    with calls(client, f"read annotation {annotation_id}"):
        try:
            return client.annotations.get(id=int(annotation_id)).model_dump(mode="json")
        except ApiError as e:
            if e.status_code == 404:
                return None
            raise


def task_predictions(client: Any, task_id: int) -> list[dict[str, Any]]:
    """A task's predictions as plain dicts (``id``, ``model_version``, ``result``, ``created_at``...)."""
    with calls(client, f"read the predictions of task {task_id}"):
        return [p.model_dump(mode="json") for p in client.predictions.list(task=int(task_id))]


def project_polygon_control(client: Any, project_id: int) -> tuple[str, str, list[str]]:
    """``(from_name, to_name, labels)`` of the project's first PolygonLabels control (read by ``LabelInterface``).

    Raises:
        LabelConfigError: the project's labeling config has none.
    """
    with calls(client, f"read project {project_id}"):
        project = client.projects.get(id=project_id)
    return polygon_control(project.label_config or "", where=f"project {project_id}")


def label_config_of(client: Any, project_id: int) -> str:
    """The project's labeling config (XML)."""
    with calls(client, f"read project {project_id}"):
        return client.projects.get(id=project_id).label_config or ""


# ------------------------------------------------------------------------------------- project set-up
#: The title under which :func:`setup_project` connects ShoeSeg's ML backend to a project.
BACKEND_TITLE = "ShoeSeg Mask R-CNN"


def setup_project(
    client,
    *,
    title: str,
    backend_url: str,
    labels: tuple[str, ...] = ("shoe",),
    project_id: int | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> tuple[int, bool]:
    """Finds or creates the project and connects it to the ML backend; returns ``(project_id, created)``.

    The project is ``project_id`` when it still exists, else the oldest project titled ``title``, else
    a new one with a PolygonLabels config over ``labels``. The backend is connected once: an ML
    backend of the project at another URL (a port that changed) is moved to ``backend_url``.
    ``basic_auth`` (user, password) is given to Label Studio when the backend requires it.

    Example:
        >>> setup_project(ls, title="ShoeSeg", backend_url="http://127.0.0.1:9090")  # doctest: +SKIP
        (1, True)
    """
    project = None
    if project_id is not None:
        try:
            project = client.projects.get(id=project_id)
        except Exception:  # noqa: BLE001 - deleted by hand: look it up by title
            project = None
    if project is None:
        same_title = sorted((p for p in client.projects.list(title=title) if p.title == title), key=lambda p: p.id)
        project = same_title[0] if same_title else None
    created = project is None
    if created:
        project = client.projects.create(
            title=title,
            label_config=labeling_config(list(labels)),
            description="Shoe instance segmentation with a Mask R-CNN pre-annotating every shoe; "
            "tasks sorted by prediction score show the most informative images first.",
        )
        log.info("created project %d %r", project.id, title)
    pid = int(project.id)
    auth = {} if basic_auth is None else dict(
        auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    backends = list(client.ml.list(project=pid))
    if any(b.url.rstrip("/") == backend_url.rstrip("/") for b in backends):
        return pid, created
    mine = [b for b in backends if (b.title or "") == BACKEND_TITLE]
    if mine:
        client.ml.update(id=mine[0].id, url=backend_url, **auth)
        log.info("project %d: ML backend %d moved to %s", pid, mine[0].id, backend_url)
    else:
        client.ml.create(project=pid, url=backend_url, title=BACKEND_TITLE, is_interactive=False, auto_update=True,
                         **auth)
        log.info("project %d: ML backend %s connected", pid, backend_url)
    return pid, created


# ------------------------------------------------------------------------------------- predictions
def push_predictions(client: Any, project_id: int, items: list[dict], *, model_version: str) -> int:
    """Stores predictions (``{"task", "result", "score"}`` dicts) in Label Studio in one request.

    Falls back to one request per task when the bulk route is refused. Returns how many were stored.
    """
    from label_studio_sdk.core.api_error import ApiError

    items = [dict(item, model_version=model_version) for item in items]
    if not items:
        return 0
    try:
        client.projects.import_predictions(id=project_id, request=items)
    except ApiError as e:
        if e.status_code not in (404, 405):
            raise
        log.info("bulk prediction import refused (%s): one request per task", e.status_code)
        for item in items:
            client.predictions.create(task=item["task"], result=item["result"], score=item["score"],
                                      model_version=model_version)
    return len(items)


def delete_predictions(client: Any, prediction_ids: list[int]) -> int:
    """Deletes predictions by id (never annotations); returns how many were deleted. One already gone counts as done."""
    from label_studio_sdk.core.api_error import ApiError

    done = 0
    for pid in prediction_ids:
        try:
            client.predictions.delete(id=int(pid))
        except ApiError as e:
            if e.status_code != 404:
                raise
        done += 1
    return done


def project_model_version(client: Any, project_id: int) -> str | None:
    """The project's ``model_version``: the version whose prediction scores Label Studio sorts by."""
    with calls(client, f"read project {project_id}"):
        return getattr(client.projects.get(id=project_id), "model_version", None) or None


def set_model_version(client: Any, project_id: int, model_version: str) -> None:
    """Makes ``model_version`` the project's: Label Studio orders by the scores of its predictions only."""
    client.projects.update(id=project_id, model_version=model_version)


def task_score(task: Any, model_version: str | None) -> float | None:
    """The score of ``task``'s prediction made by ``model_version`` (the newest one), else ``None``.

    When ``model_version`` is ``None``, the newest prediction's score counts.
    """
    preds = _get(task, "predictions") or []
    best = None
    for p in preds:
        if model_version is not None and _get(p, "model_version") != model_version:
            continue
        score = _get(p, "score")
        if score is None:
            continue
        key = (_get(p, "created_at") or "", _get(p, "id") or 0)
        if best is None or key > best[0]:
            best = (key, float(score))
    return None if best is None else best[1]


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _unannotated_query() -> str:
    return json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                    {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0},
                ],
            },
            "ordering": ["tasks:predictions_score"],
        }
    )


def select_next(client: Any, project_id: int, k: int) -> list[Any]:
    """The ``k`` unlabelled tasks of a project to label next: lowest prediction score first.

    Tasks without annotations (neither submitted nor skipped) are asked for in Label Studio's
    ``tasks:predictions_score`` order, then ordered again here by the score of their prediction
    from the project's current ``model_version``, so the answer does not depend on that ordering
    being applied server side. Tasks that have no such prediction come last, by id.

    Returns:
        Task objects of the SDK (with ``id``, ``data`` and ``predictions``), most informative first.

    Example:
        >>> for task in select_next(ls, 3, 10):  # doctest: +SKIP
        ...     print(task.id, task_score(task, None))
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model_version = project_model_version(client, project_id)
    with calls(client, f"list the unlabelled tasks of project {project_id}"):
        tasks = list(client.tasks.list(project=project_id, query=_unannotated_query(), fields="all"))
    tasks = [t for t in tasks if not (_get(t, "total_annotations") or 0) and not (_get(t, "cancelled_annotations") or 0)]

    def key(task):
        s = task_score(task, model_version)
        return (s is None, s if s is not None else 0.0, _get(task, "id") or 0)

    tasks.sort(key=key)
    return tasks[:k]
