"""The one Label Studio client: every call any part of ShoeSeg makes to a Label Studio server, on ``label_studio_sdk``.

* connecting and the credentials (:mod:`~shoeseg_services.ls_api.connection`): :func:`connect`,
  :func:`auth_headers` (the ``Authorization`` header of image downloads), the errors, and which failures are
  worth a retry (:func:`is_transient`, :func:`call`);
* datasets in and out (:mod:`~shoeseg_services.ls_api.datasets`): :func:`import_dataset`,
  :func:`export_dataset`, :func:`accepted_annotations`;
* a project's work (:mod:`~shoeseg_services.ls_api.projects`): set-up (:func:`setup_project`), tasks
  (:func:`list_tasks`), predictions (:func:`push_predictions`, :func:`delete_predictions`), the project's model
  version (:func:`set_model_version`) and the next tasks to label (:func:`select_next`).

Labeling configs are read by :mod:`shoeseg_services.ls_config` (the SDK's ``LabelInterface``). Everything a
caller needs is here::

    from shoeseg_services.ls_api import connect, list_tasks
"""

from shoeseg_services.ls_api.connection import (
    LabelStudioError,
    LabelStudioUnavailable,
    auth_headers,
    base_url,
    call,
    connect,
    is_transient,
)
from shoeseg_services.ls_api.datasets import (
    SAME_TOL_PX,
    TASK_BATCH,
    UPLOAD_BATCH,
    ImportResult,
    accepted_annotations,
    export_dataset,
    import_dataset,
)
from shoeseg_services.ls_api.projects import (
    BACKEND_TITLE,
    delete_predictions,
    get_annotation,
    label_config_of,
    list_tasks,
    project_model_version,
    project_polygon_control,
    push_predictions,
    select_next,
    set_model_version,
    setup_project,
    task_predictions,
    task_score,
)

__all__ = [
    "BACKEND_TITLE",
    "SAME_TOL_PX",
    "TASK_BATCH",
    "UPLOAD_BATCH",
    "ImportResult",
    "LabelStudioError",
    "LabelStudioUnavailable",
    "accepted_annotations",
    "auth_headers",
    "base_url",
    "call",
    "connect",
    "delete_predictions",
    "export_dataset",
    "get_annotation",
    "import_dataset",
    "is_transient",
    "label_config_of",
    "list_tasks",
    "project_model_version",
    "project_polygon_control",
    "push_predictions",
    "select_next",
    "set_model_version",
    "setup_project",
    "task_predictions",
    "task_score",
]
