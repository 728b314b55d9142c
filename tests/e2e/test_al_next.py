"""`shoeseg al next` and `select_next` against a real Label Studio 1.23.2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shoeseg_app.cli import app
from shoeseg_services.ls_api import select_next

runner = CliRunner()


@pytest.mark.e2e
def test_next_lists_unlabelled_tasks_lowest_score_first(label_studio, ls_client):
    from via_tools.labelstudio import labeling_config

    project = ls_client.projects.create(title="al-next", label_config=labeling_config(["shoe"]))
    pid = project.id
    # task name -> (score under the current model v2, or None)
    plan = {"a": 0.9, "b": 0.05, "c": 0.4, "d": None, "e": 0.2, "f": 0.01}
    ids = {}
    for name, score in plan.items():
        task = ls_client.tasks.create(project=pid, data={"image": f"/data/local-files/?d=shoes/{name}.jpg"})
        ids[name] = task.id
        # an old model thought every image was hard: its scores must not count
        ls_client.predictions.create(task=task.id, result=[], score=0.0, model_version="v1")
        if score is not None:
            ls_client.predictions.create(task=task.id, result=[], score=score, model_version="v2")
    ls_client.projects.update(id=pid, model_version="v2")
    # "f" (the most informative) is already labelled, so it is not proposed again
    ls_client.annotations.create(id=ids["f"], result=[], lead_time=1.0)

    tasks = select_next(ls_client, pid, 10)
    assert [t.id for t in tasks] == [ids[n] for n in ("b", "e", "c", "a", "d")]
    assert [t.id for t in select_next(ls_client, pid, 2)] == [ids["b"], ids["e"]]

    res = runner.invoke(app, ["al", "next", "--project", str(pid), "--k", "3", "--json",
                              "--url", label_studio.url, "--api-key", label_studio.token])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["task"] for r in rows] == [ids["b"], ids["e"], ids["c"]]
    assert [r["score"] for r in rows] == [0.05, 0.2, 0.4]
    assert rows[0]["image"].endswith("shoes/b.jpg") and rows[0]["model_version"] == "v2"

    table = runner.invoke(app, ["al", "next", "--project", str(pid), "--k", "5",
                                "--url", label_studio.url, "--api-key", label_studio.token])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["task", "score", "image"]
    assert lines[-1].split()[:2] == [str(ids["d"]), "-"]  # no prediction from v2: last
