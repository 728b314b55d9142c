"""The ML backend as a real process (`shoeseg serve`) connected to a real Label Studio 1.23.2.

Label Studio calls the backend itself: ``/health`` and ``/setup`` when it is added, ``/predict`` from the
Data Manager's "retrieve predictions" action, ``/versions`` from the versions view. The tests read back
what Label Studio stored.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.e2e

def test_label_studio_stores_valid_polygon_predictions(label_studio, shoeseg_backend, preannotated):
    client = label_studio.client()
    ml = client.ml.get(id=preannotated.ml_backend_id)
    assert str(ml.state).endswith("CO"), f"backend state {ml.state}: {ml.error_message}\n{shoeseg_backend.log_tail()}"
    predictions = client.predictions.list(project=preannotated.project_id)
    by_task = {p.task: p for p in predictions}
    assert sorted(by_task) == sorted(preannotated.task_ids), shoeseg_backend.log_tail()
    for task_id, (w, h) in preannotated.sizes_wh.items():
        p = by_task[task_id]
        assert p.model_version == "test-v1"
        assert p.result, f"task {task_id}: empty prediction\n{shoeseg_backend.log_tail()}"
        scores = []
        for region in p.result:
            assert region["type"] == "polygonlabels" and region["from_name"] == "label"
            assert (region["original_width"], region["original_height"]) == (w, h)
            pts = np.asarray(region["value"]["points"], float)
            assert pts.shape[1] == 2 and len(pts) >= 3 and ((pts >= 0) & (pts <= 100)).all()
            assert region["value"]["polygonlabels"] == ["shoe"] and region["value"]["closed"] is True
            assert 0 <= region["score"] <= 1
            scores.append(region["score"])
        assert p.score == pytest.approx(max(scores), abs=1e-3)  # least confidence: the best candidate's score


def test_retrieving_again_asks_only_for_missing_versions(label_studio, shoeseg_backend, preannotated):
    client = label_studio.client()
    before = len(client.predictions.list(project=preannotated.project_id))
    client.actions.create(id="retrieve_tasks_predictions", project=preannotated.project_id,
                          selected_items={"all": True, "excluded": []})
    assert len(client.predictions.list(project=preannotated.project_id)) == before


def test_versions_view_lists_the_registry(label_studio, preannotated):
    versions = label_studio.client().ml.list_model_versions(id=preannotated.ml_backend_id)
    assert list(versions.versions) == ["test-v1", "test-v2"]


def test_interactive_box_through_label_studio(label_studio, preannotated):
    task_id = preannotated.task_ids[0]
    context = {"result": [{
        "original_width": 128, "original_height": 96, "image_rotation": 0, "from_name": "label", "to_name": "image",
        "type": "rectanglelabels", "origin": "manual",
        "value": {"x": 20, "y": 25, "width": 40, "height": 50, "rotation": 0, "rectanglelabels": ["shoe"]},
    }]}
    r = httpx.post(f"{label_studio.url}/api/ml/{preannotated.ml_backend_id}/interactive-annotating",
                   headers={"Authorization": f"Token {label_studio.token}"},
                   json={"task": task_id, "context": context}, timeout=100)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    (region,) = data["result"]
    pts = np.asarray(region["value"]["points"], float)
    assert region["type"] == "polygonlabels"
    assert pts[:, 0].min() >= 20 - 1 and pts[:, 0].max() <= 60 + 1
    assert pts[:, 1].min() >= 25 - 1.1 and pts[:, 1].max() <= 75 + 1.1
