"""Request and response bodies of the ML backend protocol as Label Studio 1.23 speaks it.

Label Studio sends full task objects and project objects with many more fields than the backend uses;
the models keep what the backend reads and ignore the rest.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TASKS_PER_REQUEST = 10_000

_CONFIG_EXAMPLE = (
    '<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">'
    '<Label value="shoe"/></PolygonLabels></View>'
)


class _Ignoring(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Task(_Ignoring):
    """A Label Studio task: its ``id`` and ``data`` (``{"image": "/data/upload/1/x.jpg"}``)."""

    id: int | str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class PredictParams(_Ignoring):
    """``params`` of ``/predict``: storage credentials (unused) and the interactive ``context``."""

    login: str | None = None
    password: str | None = None
    context: dict[str, Any] | None = None


class PredictRequest(_Ignoring):
    """``POST /predict``: the tasks to pre-annotate, the project uid and its labeling config."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{
        "tasks": [{"id": 2, "data": {"image": "/data/upload/1/3c053945-img1.jpg"}},
                  {"id": 3, "data": {"image": "/data/local-files/?d=imgs/img1.jpg"}}],
        "project": "1.1795626459",
        "label_config": _CONFIG_EXAMPLE,
        "params": {"login": None, "password": None, "context": None},
    }]})

    tasks: list[Task] = Field(max_length=MAX_TASKS_PER_REQUEST)
    project: str | int | None = None
    label_config: str | None = None
    params: PredictParams | None = None


class TaskPrediction(BaseModel):
    """One task's prediction: result regions, the task score and the model version that made it."""

    result: list[dict[str, Any]]
    score: float
    model_version: str
    error: str | None = Field(default=None, description="why the result is empty (image refused or unreadable)")


class PredictResponse(BaseModel):
    """``/predict`` answer: one :class:`TaskPrediction` per task, in the order of the request."""

    results: list[TaskPrediction]
    model_version: str


class SetupRequest(_Ignoring):
    """``POST /setup``: the labeling config (``schema``), Label Studio's base URL and the owner's token."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, json_schema_extra={"examples": [{
        "project": "1.1795626459", "schema": _CONFIG_EXAMPLE, "hostname": "http://localhost:8080",
        "access_token": "0123456789abcdef", "extra_params": None,
    }]})

    project: str | int | None = None
    label_schema: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class SetupResponse(BaseModel):
    """``/setup`` answer: the model version Label Studio stores for the backend."""

    model_version: str
    labels: dict[str, list[str]] = Field(default_factory=dict, description="control name -> its labels served")


class HealthResponse(BaseModel):
    """``GET /health``: always ``UP`` while the process serves; says which model and why none."""

    status: str
    model_class: str = "ShoeSegModel"
    model_version: str
    model_loaded: bool
    device: str
    reason: str | None = None
    training: dict[str, Any] | None = Field(
        default=None,
        description="per project: state (queued, running, idle, failed), job_id, reason, last_outcome and, "
                    "for a failed training, the error; null without Redis",
    )


class WebhookEvent(_Ignoring):
    """A Label Studio webhook body: ``action`` plus ``project`` / ``annotation`` / ``task`` objects."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"action": "START_TRAINING", "project": {"id": 1, "title": "shoes"}},
        {"action": "PROJECT_UPDATED", "project": {"id": 1, "title": "shoes"}},
    ]})

    action: str
    project: Any = Field(default=None, description="the project object, or its id (validated by the webhook)")


class WebhookResponse(BaseModel):
    """What was done with a webhook event (``queued``, ``follow_up``, ``counted``, ``ignored``...)."""

    model_config = ConfigDict(extra="allow")

    action: str
    event: str | None = None


class VersionInfo(BaseModel):
    version: str
    status: str | None = None
    created_at: str | None = None
    parent: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    acceptance: dict[str, Any] | None = Field(
        default=None,
        description="live acceptance (shoeseg.acceptance): annotations it rests on, shoes kept within IoU 0.9, "
                    "moved, deleted, drawn, vertices changed, kept_share; null before the first annotation",
    )
    gate: dict[str, Any] | None = Field(
        default=None,
        description="the gate's decision when it was registered (shoeseg.gate): what it was compared on, the "
                    "difference in mask AP and its interval, promote or not and why; null when none was recorded",
    )
    annotator: dict[str, Any] | None = Field(
        default=None,
        description="the annotator's numbers on its validation images at its serving threshold (shoeseg.edits): "
                    "shoes matched at IoU 0.5 / 0.75 / 0.85 / 0.9, missed, false positives, vertices; null when "
                    "none were measured",
    )


class VersionsResponse(BaseModel):
    """``GET /versions``: the registry's versions (``versions`` is what Label Studio reads)."""

    versions: list[str]
    current: str | None = None
    details: list[VersionInfo] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every error answer: a message for people, never a traceback."""

    error: str
