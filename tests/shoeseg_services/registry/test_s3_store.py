"""The model registry on an S3 bucket prefix, against a real S3-compatible server (moto's, in its own process).

The checkpoints here are tiny files in the checkpoint format (a few random weights): the registry only reads
their metadata. The backend tests load real models from S3 (tests/e2e/test_s3_storage.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoeseg_services.registry import ModelRegistry, RegistryError
from shoeseg_services.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[3]


def tiny_checkpoint(path: Path, version: str, *, parent: str | None = None, seed: int = 0) -> Path:
    """A checkpoint file the registry accepts: ShoeSeg's format with a few random weights."""
    import torch

    from shoeseg.weights_file import CHECKPOINT_FORMAT

    g = torch.Generator().manual_seed(seed)
    meta = {"format": CHECKPOINT_FORMAT, "version": version, "class_names": ["shoe"], "model_config": {},
            "metrics": {"segm_AP": 0.1 * seed}, "parent_version": parent}
    torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": {"w": torch.randn(64, generator=g)}}, path)
    return path


@pytest.fixture
def ckpts(tmp_path):
    """a, b fine-tuned from a, c fine-tuned from b."""
    names = ("20250101-000000-aaaaaa", "20250102-000000-bbbbbb", "20250103-000000-cccccc")
    parents = (None, names[0], names[1])
    return [tiny_checkpoint(tmp_path / f"{n}.pt", n, parent=p, seed=i + 1) for i, (n, p) in enumerate(zip(names, parents, strict=True))]


def objects(server, bucket: str, prefix: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read_json(server, bucket: str, key: str) -> dict:
    return json.loads(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_round_trip_register_promote_rollback_and_download_once(s3_env, ckpts, tmp_path, caplog):
    bucket = s3_env.new_bucket("registry")
    writer = ModelRegistry(f"s3://{bucket}/shoes/models", cache_dir=tmp_path / "worker-cache")
    assert writer.is_s3 and writer.root == f"s3://{bucket}/shoes/models"
    assert writer.versions() == [] and writer.current() is None and writer.current_version_id() is None

    a, b, c = (writer.register(p, metrics=None, parent=None, meta={"dataset": "shoes"}) for p in ckpts)
    assert [v.version for v in writer.versions()] == [a.version, b.version, c.version]
    assert b.parent == a.version and b.metrics == {"segm_AP": pytest.approx(0.2)} and b.meta["dataset"] == "shoes"
    assert str(a.path) == f"s3://{bucket}/shoes/models/versions/{a.version}"
    record = read_json(s3_env, bucket, f"shoes/models/versions/{a.version}/version.json")
    import hashlib

    assert record["sha256"] == hashlib.sha256(ckpts[0].read_bytes()).hexdigest() == a.sha256
    assert record["bytes"] == ckpts[0].stat().st_size
    with pytest.raises(RegistryError, match="already registered"):
        writer.register(ckpts[0], metrics={}, parent=None, meta={})

    assert writer.promote(a.version).status == "promoted"
    writer.promote(b.version)
    writer.promote(c.version)
    assert objects(s3_env, bucket, "shoes/models/current/") == [
        f"shoes/models/current/{n:012d}.json" for n in (1, 2, 3)]

    # another machine (its own cache) sees the promotions and downloads the checkpoint once
    reader = ModelRegistry(f"s3://{bucket}/shoes/models", cache_dir=tmp_path / "backend-cache")
    assert reader.current_version_id() == c.version
    assert {v.version: v.status for v in reader.versions()} == {a.version: "candidate", b.version: "candidate",
                                                                 c.version: "promoted"}
    with caplog.at_level(logging.INFO, logger="shoeseg_services.registry"):
        got = reader.current()
        again = reader.get(c.version)
    assert got.checkpoint == again.checkpoint == tmp_path / "backend-cache" / "models" / f"{c.sha256}.pt"
    assert got.checkpoint.read_bytes() == ckpts[2].read_bytes()
    assert len([r for r in caplog.records if r.getMessage().startswith("downloaded model version")]) == 1
    assert sorted(p.name for p in got.checkpoint.parent.iterdir()) == [f"{c.sha256}.pt"]  # no temporary file left
    # the writer kept its own copy: it downloads nothing
    assert (tmp_path / "worker-cache" / "models" / f"{c.sha256}.pt").read_bytes() == ckpts[2].read_bytes()

    assert reader.rollback().version == b.version
    assert writer.current_version_id() == b.version  # seen by the other instance at once
    assert writer.rollback().version == a.version  # down the stack, not back to c
    with pytest.raises(RegistryError, match="cannot roll back"):
        reader.rollback()
    latest = read_json(s3_env, bucket, "shoes/models/current/000000000005.json")
    assert latest["seq"] == 5 and latest["version"] == a.version and latest["action"] == "rollback"
    assert [e["action"] for e in latest["history"]["events"]] == ["promote"] * 3 + ["rollback"] * 2
    assert reader.get(a.version).promoted_at is not None


def test_rollback_falls_back_to_the_parent_and_a_registry_at_the_bucket_root(s3_env, ckpts, tmp_path):
    bucket = s3_env.new_bucket("root")
    reg = ModelRegistry(f"s3://{bucket}", cache_dir=tmp_path)
    reg.register(ckpts[0], metrics={}, parent=None, meta={})
    b = reg.register(ckpts[1], metrics={}, parent=None, meta={})
    reg.promote(b.version)
    assert objects(s3_env, bucket, "current/") == ["current/000000000001.json"]
    assert reg.rollback().version == ckpts[0].stem


def test_a_version_without_its_commit_marker_is_not_there(s3_env, ckpts, tmp_path, caplog):
    bucket = s3_env.new_bucket("partial")
    reg = ModelRegistry(f"s3://{bucket}/m", cache_dir=tmp_path)
    a = reg.register(ckpts[0], metrics={}, parent=None, meta={})
    reg.promote(a.version)
    # a register killed after the checkpoint upload, before version.json
    s3_env.client().upload_file(str(ckpts[1]), bucket, f"m/versions/{ckpts[1].stem}/model.pt")
    with caplog.at_level(logging.WARNING, logger="shoeseg_services.registry"):
        assert [v.version for v in reg.versions()] == [a.version]
    assert not caplog.records  # an upload in progress is no damage
    with pytest.raises(RegistryError, match=f"{ckpts[1].stem}.*not in the registry.*version.json"):
        reg.get(ckpts[1].stem)
    with pytest.raises(RegistryError, match=f"{ckpts[1].stem}.*version.json"):
        reg.promote(ckpts[1].stem)
    assert reg.current_version_id() == a.version
    # the register can be done again: it overwrites the partial upload and commits
    assert reg.register(ckpts[1], metrics={}, parent=None, meta={}).version == ckpts[1].stem


def test_a_damaged_checkpoint_is_refused_and_not_cached(s3_env, ckpts, tmp_path):
    bucket = s3_env.new_bucket("damaged")
    reg = ModelRegistry(f"s3://{bucket}/m", cache_dir=tmp_path / "w")
    a = reg.register(ckpts[0], metrics={}, parent=None, meta={})
    b = reg.register(ckpts[1], metrics={}, parent=None, meta={})
    data = bytearray(ckpts[0].read_bytes())
    data[-10] ^= 0xFF  # same size, other content
    s3_env.client().put_object(Bucket=bucket, Key=f"m/versions/{a.version}/model.pt", Body=bytes(data))
    s3_env.client().delete_object(Bucket=bucket, Key=f"m/versions/{b.version}/model.pt")
    reader = ModelRegistry(f"s3://{bucket}/m", cache_dir=tmp_path / "r")
    with pytest.raises(RegistryError, match=f"{a.version}.*damaged.*m/versions/{a.version}/model.pt has sha256"):
        reader.get(a.version)
    assert not list((tmp_path / "r" / "models").iterdir())
    with pytest.raises(RegistryError, match=f"{b.version}.*incomplete.*model.pt is missing"):
        reader.promote(b.version)
    assert [v.version for v in reader.versions()] == [a.version]  # b is skipped with a warning


#: argv: registry root, version, promotions, cache, barrier folder. Says it is ready, waits for "go", promotes.
PROMOTER = r"""
import logging, sys, time
from pathlib import Path
from shoeseg_services.registry import ModelRegistry

logging.basicConfig(level=logging.INFO, format="%(message)s")
root, version, n, cache, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
reg = ModelRegistry(root, cache_dir=cache)
reg.current_version_id()  # boto3 imported, the client made
(barrier / f"ready-{version}").touch()
while not (barrier / "go").exists():
    time.sleep(0.005)
for _ in range(n):
    reg.promote(version)
"""


def test_concurrent_promotions_from_two_processes_leave_one_consistent_chain(s3_env, ckpts, tmp_path):
    bucket = s3_env.new_bucket("race")
    root = f"s3://{bucket}/m"
    reg = ModelRegistry(root, cache_dir=tmp_path)
    a, b = (reg.register(p, metrics={}, parent=None, meta={}).version for p in ckpts[:2])
    n = 12
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, root, v, str(n), str(tmp_path), str(barrier)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for v in (a, b)]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (barrier / "go").touch()  # both start promoting at once
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    retries = sum(o.count("lost the race") for o in outs)
    assert retries > 0, f"the two processes never raced: {outs}"  # the conditional create did refuse some

    keys = objects(s3_env, bucket, "m/current/")
    assert keys == [f"m/current/{i:012d}.json" for i in range(1, 2 * n + 1)]  # no promotion lost, none doubled
    chain = [read_json(s3_env, bucket, k) for k in keys]
    for i, obj in enumerate(chain):  # each pointer object was computed from the one before it
        assert obj["seq"] == i + 1
        assert obj["history"]["events"][-1]["version"] == obj["version"]
        assert obj["history"]["events"][:-1] == (chain[i - 1]["history"]["events"] if i else [])
    promoted = [e["version"] for e in chain[-1]["history"]["events"]]
    assert promoted.count(a) == n and promoted.count(b) == n
    final = ModelRegistry(root, cache_dir=tmp_path)
    assert final.current_version_id() == chain[-1]["version"] == promoted[-1]
    assert final.current().version == promoted[-1]
    logging.getLogger(__name__).info("%d promotions from two processes, %d lost a race and tried again", 2 * n,
                                     retries)


def test_bad_locations_and_environments_name_the_bucket(s3_env, ckpts, tmp_path, monkeypatch):
    missing = ModelRegistry("s3://no-such-bucket-shoeseg/models", cache_dir=tmp_path)
    with pytest.raises(RegistryError, match="bucket 'no-such-bucket-shoeseg' does not exist"):
        missing.current_version_id()
    with pytest.raises(RegistryError, match="no-such-bucket-shoeseg.*does not exist"):
        missing.register(ckpts[0], metrics={}, parent=None, meta={})

    bucket = s3_env.new_bucket("env")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RegistryError, match=f"s3://{bucket}/m.*no AWS credentials.*AWS_ACCESS_KEY_ID"):
        ModelRegistry(f"s3://{bucket}/m", cache_dir=tmp_path).current_version_id()

    from shoeseg_app.stack.service import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match=f"s3://{bucket}/m.*endpoint http://127.0.0.1:\\d+ cannot be reached"):
        ModelRegistry(f"s3://{bucket}/m", cache_dir=tmp_path).versions()

    with pytest.raises(RegistryError, match="names no valid bucket"):
        ModelRegistry("s3:///models")


def test_settings_keep_an_s3_root_whole():
    s = Settings.from_env({"SHOESEG_MODEL_DIR": "s3://shoes/prod/models/", "SHOESEG_S3_BUCKETS": "shoe-images, more"})
    assert s.model_dir == "s3://shoes/prod/models" and s.s3_buckets == ("shoe-images", "more")
    assert Settings.from_env({"SHOESEG_MODEL_DIR": "/srv/models"}).model_dir == Path("/srv/models")
    with pytest.raises(SettingsError, match="SHOESEG_MODEL_DIR='s3://' is not s3://bucket/prefix"):
        Settings.from_env({"SHOESEG_MODEL_DIR": "s3://"})
    with pytest.raises(SettingsError, match="SHOESEG_S3_BUCKETS has 's3://shoes'"):
        Settings.from_env({"SHOESEG_S3_BUCKETS": "s3://shoes"})
    # a root that went through Path (s3:/bucket/prefix) still names the bucket
    assert ModelRegistry(Path("s3://shoes/models"), cache_dir="/tmp").root == "s3://shoes/models"
