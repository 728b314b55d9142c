"""ML backend latency and memory: `/predict` over HTTP against the bare model on the same 512 px images.

Runs `shoeseg serve` as a real process on a temporary registry holding ``SHOESEG_BENCH_CHECKPOINT`` (a trained
checkpoint, served as the backend serves it by default: ``SHOESEG_RUNTIME=auto``, its own threshold), else a Mask
R-CNN R50-FPN (random weights, box-classifier and mask-head biases set so that each image yields a few solid
masks, as a trained model would), and prints:

* one uncached image: `/predict` (HTTP, image read from the local root, decode, inference, polygons, JSON)
  against the bare ``predict`` and the bare ``forward_raw`` of the same runtime in this process, medians over
  distinct images; and against the forward inside the service on the same request (its ``Server-Timing``
  header): what the round trip adds around the forward, with the stages' share;
* cached `/predict` p50 / p95;
* 8 concurrent clients: errors, latency p50 / p95, throughput;
* the service's resident memory after start and after the load;
* the worst-case request (6 single-colour 7000x7000 PNGs of about 62 KB and 6 40-megapixel JPEGs, 12 tasks):
  the service's peak-RSS growth (``VmHWM``), one request and 8 concurrent ones, against the plain path the
  backend took before (every image decoded at full size, then ``Predictor.predict`` on them), run in a child
  process on ``WORST_REFERENCE_TASKS`` of the images only, since the plain path on all 12 needs about 10 GB.

Run: `python -m bench backend` (or `python bench/bench_backend.py`). Targets: overhead <= 10 % (<= 5 % over the forward), cached p50
<= 20 ms, no errors.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

SIZE_PX = 512
N_UNCACHED = 5
N_CACHED = 60
N_CLIENTS = 8
REQUESTS_PER_CLIENT = 4
WORST_REFERENCE_TASKS = 2
CONFIG = ('<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">'
          '<Label value="shoe"/></PolygonLabels></View>')



def _run_clients(client) -> float:
    """Runs ``client(k)`` for the N_CLIENTS clients at once, each in its thread; the wall seconds they took."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0

def _image(seed: int, width_px: int, height_px: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(150, 255, (height_px, width_px, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, width_px - 120), rng.integers(0, height_px - 80)
        arr[y:y + 80, x:x + 120] = rng.integers(0, 90, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _checkpoint(path: Path) -> None:
    import torch

    from shoeseg.checkpoint import save_checkpoint
    from shoeseg.model import build_model

    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=SIZE_PX, max_size=SIZE_PX, box_detections_per_img=5)
    with torch.no_grad():  # a few confident detections with one solid mask each, as from a trained model
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-3.0, 3.0]))
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(0.05)
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(4.0)
    save_checkpoint(path, model=model.eval(), class_names=["shoe"], config={"purpose": "benchmark"}, version="bench-v1")


def _start_server(root: Path, registry: Path, images: Path) -> tuple[subprocess.Popen, str]:
    from shoeseg_app.stack.service import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEG_", "LABEL_STUDIO_"))}
    env.update(SHOESEG_DEVICE="cpu", SHOESEG_IMAGE_ROOT=str(images), SHOESEG_MODEL_DIR=str(registry))
    exe = Path(sys.executable).parent / "shoeseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shoeseg_app"]
    cmd += ["--log-level", "WARNING", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - kept open for the process's life
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("model_loaded"):
                return proc, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not load its model in 300 s")


def _rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _predict(client: httpx.Client, url: str, name: str, task_id: int, stages: list | None = None) -> float:
    """One ``/predict`` of one image: the client's seconds; ``stages`` gets the service's ``Server-Timing``
    (``{stage: seconds}``)."""
    body = {"tasks": [{"id": task_id, "data": {"image": name}}], "label_config": CONFIG, "project": "1.0"}
    t0 = time.perf_counter()
    r = client.post(f"{url}/predict", json=body, timeout=300)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    res = r.json()["results"][0]
    if "error" in res:
        raise RuntimeError(res["error"])
    if stages is not None:
        parts = (p.split(";dur=") for p in r.headers.get("server-timing", "").split(", ") if ";dur=" in p)
        stages.append({name: float(ms) / 1000 for name, ms in parts})
    return dt


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def _worst_images(folder: Path) -> list[str]:
    from PIL import Image

    names = []
    for i in range(6):
        Image.new("RGB", (7000, 7000), (20 * i, 90, 200 - 20 * i)).save(folder / f"flat-{i}.png", optimize=True)
        Image.new("RGB", (7300, 5480), (200 - 20 * i, 40, 20 * i)).save(folder / f"photo-{i}.jpg", quality=80)
        names += [f"flat-{i}.png", f"photo-{i}.jpg"]
    return names


_REFERENCE = """
import resource, sys
from shoeseg.predict import Predictor
from via_tools.images import decode_image
predictor = Predictor.from_checkpoint(sys.argv[1], device="cpu", score_thresh=0.5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
arrays = [decode_image(open(p, "rb").read(), name=p) for p in sys.argv[2:]]
predictor.predict(arrays)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _worst_case(url: str, pid: int, images: Path, checkpoint: Path) -> dict[str, float]:
    names = _worst_images(images)
    body = {"tasks": [{"id": i, "data": {"image": n}} for i, n in enumerate(names)], "label_config": CONFIG}
    before = _vm_hwm_mib(pid)
    t0 = time.perf_counter()
    httpx.post(f"{url}/predict", json=body, timeout=1200).raise_for_status()
    one_s = time.perf_counter() - t0
    one = _vm_hwm_mib(pid) - before
    results: list[int] = []

    # the result cache would answer every repeat: make each client's images differ by a byte
    for k in range(N_CLIENTS):
        for n in names:
            data = (images / n).read_bytes()
            (images / f"c{k}-{n}").write_bytes(data + bytes([k]))
    names_by_client = {k: [f"c{k}-{n}" for n in names] for k in range(N_CLIENTS)}

    def client_k(k: int) -> None:
        tasks = [{"id": 100 * k + i, "data": {"image": n}} for i, n in enumerate(names_by_client[k])]
        with httpx.Client() as c:
            results.append(c.post(f"{url}/predict", json={"tasks": tasks, "label_config": CONFIG},
                                  timeout=3600).status_code)

    before8 = _vm_hwm_mib(pid)
    eight_s = _run_clients(client_k)
    eight = max(_vm_hwm_mib(pid) - before8, 0.0) + one  # the first request's peak is the floor of the second
    ref = subprocess.run(
        [sys.executable, "-c", _REFERENCE, str(checkpoint),
         *[str(images / n) for n in names[:WORST_REFERENCE_TASKS]]],
        capture_output=True, text=True, check=True,
    )
    return {"one": one, "one_s": one_s, "eight": eight, "eight_s": eight_s, "ok": results.count(200),
            "reference": float(ref.stdout.strip().splitlines()[-1])}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    import torch

    from shoeseg.checkpoint import read_checkpoint_meta
    from shoeseg.runtime import load_predictor
    from shoeseg_services.registry import ModelRegistry
    from via_tools.images import decode_image

    root = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    images = root / "images"
    images.mkdir()
    names = []
    for i in range(N_UNCACHED + N_CLIENTS * REQUESTS_PER_CLIENT + 1):
        name = f"img{i:03d}.jpg"
        (images / name).write_bytes(_image(i, SIZE_PX, SIZE_PX * 3 // 4))
        names.append(name)
    given = os.environ.get("SHOESEG_BENCH_CHECKPOINT")
    if given:
        shutil.copyfile(given, root / "bench.pt")
    else:
        _checkpoint(root / "bench.pt")
    reg = ModelRegistry(root / "models")
    version = reg.register(root / "bench.pt", metrics={}, parent=None, meta={}).version
    reg.promote(version)
    model_said = (f"{given} ({read_checkpoint_meta(given)['model_config']['arch']})" if given
                  else "an R50-FPN with random weights set to give a few solid masks")

    proc, url = _start_server(root, reg.root, images)
    try:
        rss_start = _rss_mib(proc.pid)
        client = httpx.Client()
        _predict(client, url, names[-1], 0)  # connection and first-request warm-up

        # what the service serves: the runtime SHOESEG_RUNTIME picks by default and the checkpoint's threshold
        predictor = load_predictor(reg.get(version).checkpoint, runtime="auto", device="cpu")
        runtime = "ONNX Runtime" if hasattr(predictor, "export_meta") else "PyTorch"
        arrays = [decode_image((images / n).read_bytes(), name=n) for n in names[:N_UNCACHED]]
        predictor.predict([arrays[0]])  # warm-up
        service, bare, forward, n_regions, stages = [], [], [], [], []
        for i, (name, arr) in enumerate(zip(names[:N_UNCACHED], arrays, strict=True)):
            service.append(_predict(client, url, name, i + 1, stages))
            t0 = time.perf_counter()
            dets = predictor.predict([arr])[0]
            bare.append(time.perf_counter() - t0)
            n_regions.append(sum(len(d.polygons) for d in dets))
            t0 = time.perf_counter()
            predictor.forward_raw([arr])
            forward.append(time.perf_counter() - t0)
        del predictor

        cached = [_predict(client, url, names[0], 1) for _ in range(N_CACHED)]

        errors: list[str] = []
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            with httpx.Client() as c:
                for j in range(REQUESTS_PER_CLIENT):
                    # half of the requests ask for an image another client asked for: cache hits under load
                    idx = N_UNCACHED + (k * REQUESTS_PER_CLIENT + j if j % 2 == 0 else j)
                    try:
                        dt = _predict(c, url, names[idx], 1000 + k * 10 + j)
                        with lock:
                            latencies.append(dt)
                    except Exception as e:  # noqa: BLE001 - counted and shown
                        with lock:
                            errors.append(f"{type(e).__name__}: {e}")

        wall = _run_clients(worker)
        rss_end = _rss_mib(proc.pid)
        worst = _worst_case(url, proc.pid, images, reg.get(version).checkpoint)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    med_s, med_b, med_f = statistics.median(service), statistics.median(bare), statistics.median(forward)
    overhead = (med_s - med_b) / med_b * 100
    # the same requests seen from inside the service: its own forward, and everything else the round trip holds
    inner = statistics.median(st["model"] for st in stages)
    around = statistics.median(s_ - st["model"] for s_, st in zip(service, stages, strict=True))
    stage_ms = ", ".join(f"{k} {statistics.median(st.get(k, 0.0) for st in stages) * 1000:.1f}"
                         for k in ("fetch", "decode", "regions"))
    print(f"ShoeSeg ML backend, {SIZE_PX}x{SIZE_PX * 3 // 4} px JPEG, CPU ({torch.get_num_threads()} threads), "
          f"median of {N_UNCACHED} distinct images, {statistics.mean(n_regions):.1f} polygons per image; model: "
          f"{model_said}, served by {runtime}")
    rows = [
        (f"bare model forward ({runtime}, forward_raw)", f"{med_f * 1000:8.1f} ms", ""),
        ("bare Predictor.predict (masks + polygons)", f"{med_b * 1000:8.1f} ms", "reference"),
        ("/predict over HTTP, uncached", f"{med_s * 1000:8.1f} ms", f"{overhead:+.1f} % vs Predictor (target <= 10 %)"),
        ("  its forward in the service (Server-Timing model)", f"{inner * 1000:8.1f} ms",
         f"{around / inner * 100:+.1f} % round trip vs this forward (target <= 5 %)"),
        ("  the rest of the round trip, per request", f"{around * 1000:8.1f} ms",
         f"HTTP + JSON + stages (ms): {stage_ms}"),
        ("/predict cached, p50", f"{_pct(cached, 50) * 1000:8.1f} ms", "target <= 20 ms"),
        ("/predict cached, p95", f"{_pct(cached, 95) * 1000:8.1f} ms", ""),
        (f"{N_CLIENTS} concurrent clients x {REQUESTS_PER_CLIENT}: errors", f"{len(errors):8d}", "target 0"),
        (f"{N_CLIENTS} concurrent clients: p50 / p95",
         f"{_pct(latencies, 50) * 1000:.0f} / {_pct(latencies, 95) * 1000:.0f} ms" if latencies else "-",
         f"{len(latencies) / wall:.2f} requests/s"),
        ("service RSS after start", f"{rss_start:8.0f} MiB", ""),
        ("service RSS after the load", f"{rss_end:8.0f} MiB", ""),
        (f"plain path, {WORST_REFERENCE_TASKS} worst-case images: peak RSS growth", f"{worst['reference']:8.0f} MiB",
         "decode all at full size, then predict (the backend before bounding)"),
        ("worst-case request, 12 tasks: peak RSS growth", f"{worst['one']:8.0f} MiB", f"{worst['one_s']:.1f} s"),
        (f"{N_CLIENTS} concurrent worst-case requests: peak RSS growth", f"{worst['eight']:8.0f} MiB",
         f"{worst['ok']}/{N_CLIENTS} answered 200 in {worst['eight_s']:.0f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)} | {'value':>14} | note")
    print(f"{'-' * width}-|-{'-' * 14}-|-----")
    for name, value, note in rows:
        print(f"{name.ljust(width)} | {value:>14} | {note}")
    if errors:
        print("errors:", *errors[:5], sep="\n  ")


if __name__ == "__main__":
    main()
