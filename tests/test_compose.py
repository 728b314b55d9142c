"""docker-compose.yml: valid for the compose client, pinned images, health checks, GPUs for the training worker
(SHOESEG_GPUS) and a CPU worker for predictions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SERVICES = {"redis", "label-studio", "backend", "worker", "worker-predict", "dashboard", "setup"}


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin), else ``docker-compose`` (v1), else skip."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("no compose client here (neither `docker compose` nor `docker-compose`)")


def run_config(env_file: Path, tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "SHOESEG", "VIA_", "IMAGES_"))}
    env["HOME"] = str(tmp_path)  # the client may write its config there
    env.update(extra_env)
    return subprocess.run(
        [*compose_command(), "--project-directory", str(REPO), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )


def check_structure(doc: dict) -> None:
    services = doc["services"]
    assert set(services) == SERVICES
    # third-party images are pinned to a version, Label Studio to the one the project is tested with
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", services["redis"]["image"]), services["redis"]["image"]
    # backend and worker share one image built from the Dockerfile, with different commands
    assert "build" in services["backend"]
    assert services["worker"]["image"] == services["backend"]["image"]
    assert services["backend"]["command"][:2] == ["shoeseg", "serve"]
    assert services["worker"]["command"][:2] == ["shoeseg", "worker"]
    # health checks
    for name in ("redis", "label-studio", "backend", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "9090/health" in " ".join(services["backend"]["healthcheck"]["test"])
    assert "8080/health" in " ".join(services["label-studio"]["healthcheck"]["test"])
    # the worker reserves SHOESEG_GPUS NVIDIA GPUs (1 by default) and trains on all of them in one job
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert str(devices[0]["count"]) in ("${SHOESEG_GPUS:-1}", "1"), devices  # as written, or interpolated
    assert str(services["worker"]["environment"]["SHOESEG_GPUS_PER_JOB"]) in ("${SHOESEG_GPUS:-1}", "1")
    # a second worker, on CPU, takes only the prediction queue
    predict = services["worker-predict"]
    assert predict["image"] == services["backend"]["image"]
    assert predict["command"] == ["shoeseg", "worker", "--queues", "shoeseg-predict"]
    assert predict["environment"]["SHOESEG_DEVICE"] == "cpu" and "deploy" not in predict
    assert predict["environment"]["REDIS_URL"] == services["worker"]["environment"]["REDIS_URL"]
    assert predict["healthcheck"]["test"] == services["worker"]["healthcheck"]["test"]
    # models and the one image cache shared by backend and workers; Label Studio's data in a volume
    for name in ("backend", "worker", "worker-predict"):
        assert any(str(v).startswith("models:/models") or _target(v) == "/models" for v in services[name]["volumes"]), name
        assert any(str(v).startswith("image-cache:") or (isinstance(v, dict) and v.get("source") == "image-cache")
                   for v in services[name]["volumes"]), name
    # rq-dashboard on the same Redis, published on loopback only
    dashboard = services["dashboard"]
    assert dashboard["image"] == services["backend"]["image"] and "rq_dashboard" in dashboard["command"]
    assert "redis://redis:6379/0" in dashboard["command"]
    assert all(str(p.get("host_ip", "127.0.0.1") if isinstance(p, dict) else p).startswith("127.0.0.1")
               for p in dashboard["ports"])
    assert any(_target(v) == "/label-studio/data" for v in services["label-studio"]["volumes"])
    assert {"models", "label-studio-data"} <= set(doc["volumes"])
    # the setup service waits for healthy servers
    assert services["setup"]["depends_on"]["label-studio"]["condition"] == "service_healthy"
    assert services["setup"]["depends_on"]["backend"]["condition"] == "service_healthy"


def _target(volume) -> str:
    if isinstance(volume, dict):
        return volume.get("target", "")
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def test_compose_file_structure():
    check_structure(yaml.safe_load(COMPOSE.read_text()))


def test_env_example_names_every_required_variable():
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    given = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert required, "the compose file requires the admin's credentials and API key"
    assert required <= given, f"missing from .env.example: {required - given}"


def test_docker_compose_config_accepts_the_file_with_the_example_env(tmp_path):
    res = run_config(ENV_EXAMPLE, tmp_path)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(res.stdout)
    check_structure(doc)
    env = doc["services"]["backend"]["environment"]
    assert env["LABEL_STUDIO_API_KEY"] == doc["services"]["label-studio"]["environment"]["LABEL_STUDIO_USER_TOKEN"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"


def test_the_gpu_count_is_one_setting_for_the_reservation_and_the_training_processes(tmp_path):
    res = run_config(ENV_EXAMPLE, tmp_path, SHOESEG_GPUS="4")
    assert res.returncode == 0, res.stderr
    worker = yaml.safe_load(res.stdout)["services"]["worker"]
    assert str(worker["deploy"]["resources"]["reservations"]["devices"][0]["count"]) == "4"
    assert str(worker["environment"]["SHOESEG_GPUS_PER_JOB"]) == "4"


def test_docker_compose_config_names_a_missing_secret(tmp_path):
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("".join(
        line + "\n" for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("LABEL_STUDIO_API_KEY=")
    ))
    res = run_config(env_file, tmp_path)
    assert res.returncode != 0
    assert "LABEL_STUDIO_API_KEY" in res.stderr


def _label_studio_default_banned_subnets() -> list[str]:
    """Label Studio's own default list, read from the installed 1.23.2 (``core/utils/io.py``)."""
    import ast

    venv = Path(os.environ.get("SHOESEG_LS_VENV") or REPO / ".ls-venv")
    found = sorted(venv.glob("lib/python3*/site-packages/label_studio/core/utils/io.py"))
    if not found:
        pytest.skip(f"Label Studio is not installed in {venv} (`make test` installs it)")
    for node in ast.walk(ast.parse(found[0].read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "default_banned_subnets":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError(f"no default_banned_subnets in {found[0]}")


def test_label_studio_keeps_ssrf_protection_and_allows_only_the_stack_network():
    import ipaddress

    doc = yaml.safe_load(COMPOSE.read_text())
    env = doc["services"]["label-studio"]["environment"]
    assert env["SSRF_PROTECTION_ENABLED"] == "true" and env["ML_BLOCK_LOCAL_IP"] == "true"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    stack = ipaddress.ip_network(doc["networks"]["default"]["ipam"]["config"][0]["subnet"])
    banned = [ipaddress.ip_network(s.strip()) for s in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    expected = []
    for subnet in map(ipaddress.ip_network, _label_studio_default_banned_subnets()):
        if subnet.version == stack.version and stack.subnet_of(subnet):
            expected.extend(sorted(subnet.address_exclude(stack)))
        else:
            expected.append(subnet)
    assert sorted(banned, key=str) == sorted(expected, key=str)
    # what the stack needs is reachable; the cloud metadata address and loopback are not
    for ip in ("172.28.0.5", "169.254.169.254", "127.0.0.1", "10.1.2.3", "172.17.0.2"):
        refused = any(ipaddress.ip_address(ip) in s for s in banned)
        assert refused == (ip != "172.28.0.5"), ip


def test_backend_is_published_on_loopback_and_needs_basic_auth():
    doc = yaml.safe_load(COMPOSE.read_text())
    backend = doc["services"]["backend"]
    assert all(str(p).startswith("127.0.0.1:") for p in backend["ports"]), backend["ports"]
    env = COMPOSE.read_text()
    assert "BASIC_AUTH_PASS: ${BASIC_AUTH_PASS:?" in env  # compose refuses to start without it


S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
           "SHOESEG_S3_BUCKETS", "SHOESEG_ALLOWED_HOSTS")


def test_the_s3_settings_pass_through_from_env_and_are_left_out_when_unset(tmp_path):
    res = run_config(ENV_EXAMPLE, tmp_path)
    assert res.returncode == 0, res.stderr
    services = yaml.safe_load(res.stdout)["services"]
    for name in ("backend", "worker", "worker-predict"):
        env = services[name]["environment"]
        assert env["SHOESEG_MODEL_DIR"] == "/models", name  # the volume by default
        assert all(env.get(k) is None for k in S3_KEYS), {k: env.get(k) for k in S3_KEYS}  # unset in the container

    env_file = tmp_path / "s3.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "SHOESEG_MODEL_DIR=s3://models-bucket/shoes\n"
                        "AWS_ENDPOINT_URL=http://minio.internal:9000\nAWS_ACCESS_KEY_ID=key\n"
                        "SHOESEG_S3_BUCKETS=photos\nSHOESEG_ALLOWED_HOSTS=minio.internal:9000\n")
    res = run_config(env_file, tmp_path)
    assert res.returncode == 0, res.stderr
    services = yaml.safe_load(res.stdout)["services"]
    for name in ("backend", "worker", "worker-predict"):
        env = services[name]["environment"]
        assert env["SHOESEG_MODEL_DIR"] == "s3://models-bucket/shoes", name
        assert env["AWS_ENDPOINT_URL"] == "http://minio.internal:9000" and env["AWS_ACCESS_KEY_ID"] == "key"
        assert env["SHOESEG_S3_BUCKETS"] == "photos" and env["SHOESEG_ALLOWED_HOSTS"] == "minio.internal:9000"
    # Label Studio itself gets none of the workers' credentials
    assert not any(k.startswith("AWS_") for k in services["label-studio"]["environment"])


def test_the_example_and_the_compose_fallbacks_keep_the_codes_defaults():
    """What a production set-up gets when it copies .env.example, or sets nothing, is what the code and the README
    call the default (the containers' model folder aside)."""
    from shoeseg_services.settings import Settings

    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    fallbacks = dict(re.findall(r"\$\{(SHOESEG_\w+):-([^}]*)\}", COMPOSE.read_text()))
    fallbacks.pop("SHOESEG_MODEL_DIR")
    default = Settings.from_env({})
    for source, values in ((".env.example", example), ("docker-compose.yml", fallbacks)):
        for name, value in values.items():
            if name.startswith("SHOESEG_"):
                assert Settings.from_env({name: value}) == default, f"{source}: {name}={value} is not the default"
