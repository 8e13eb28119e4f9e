"""Load and fuzz a running server: `unclip bench serve`.

`fuzz` sends seeded malformed requests of every kind a client gets wrong (bad JSON, wrong types,
huge or non-finite numbers, unknown fields, empty or oversized prompts, bad and oversized images,
decompression bombs, broken multipart, bad keys, wrong methods and paths, invalid HTTP) and counts
the answers: every one must be a 4xx. `load` runs N concurrent clients for a bounded time and
reports latency percentiles, completed jobs, 429s and 5xx.
"""

import io
import json
import os
import random
import socket
import threading
import time
from urllib.parse import urlparse


def _png(size, mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


GOOD = {"prompt": "a red heart", "num_images": 1, "decoder_steps": 2, "prior_steps": 2, "upsampler_steps": 2}
BAD_INTS = ["abc", [1], {"x": 1}, 1.5, 10**30, -(10**30), "true", ""]
BAD_FORM = [("num_images", "abc"), ("num_images", "99999"), ("num_images", "-5"), ("decoder_steps", "-5"),
            ("decoder_steps", "99999"), ("eta", "1e309"), ("eta", "nan"), ("eta", "-5"), ("seed", "abc"), ("seed", "1e309")]
BAD_FLOATS = ["abc", [], {}, 1e300, -1e300, "NaN"]
BAD_PROMPTS = [123, None, "", "   ", "x" * 20000, ["a", "b"], {"p": 1}]


def _cases(rng: random.Random, big: bytes, bomb: bytes):
    """(method, path, kwargs for httpx) of malformed requests, or ("raw", bytes) for invalid HTTP."""
    yield "POST", "/v1/generate", {"content": rng.choice([b"{", b"not json", b"[1,2]", b'"s"', b"null", b"{'a': 1}"]),
                                   "headers": {"content-type": "application/json"}}
    field = rng.choice(["num_images", "seed", "prior_steps", "decoder_steps", "upsampler_steps", "best_of"])
    value = rng.choice(BAD_INTS)
    if field == "seed" and isinstance(value, int) and value < 0:
        value = 10**30  # a negative seed is valid: it asks for a random one
    yield "POST", "/v1/generate", {"json": {**GOOD, field: value}}
    yield "POST", "/v1/generate", {"json": {**GOOD, rng.choice(["prior_guidance_scale", "decoder_guidance_scale"]):
                                            rng.choice(BAD_FLOATS)}}
    yield "POST", "/v1/generate", {"json": {**GOOD, "prompt": rng.choice(BAD_PROMPTS)}}
    yield "POST", "/v1/generate", {"json": {**GOOD, rng.choice(["sampler", "steps", "width", "model", "__proto__"]):
                                            rng.choice(["euler", 5, None, {"x": 1}])}}
    yield "POST", "/v1/generate", {"content": big, "headers": {"content-type": "application/json"}}
    yield "POST", "/v1/generate", {"content": json.dumps(GOOD).encode(), "headers": {"content-type": "text/plain"}}
    image = rng.choice([b"", b"\x89PNG\r\n\x1a\n" + os.urandom(rng.randrange(1, 300)), os.urandom(rng.randrange(1, 2000)),
                        _png((8, 8))[:40], b"GIF89a", bomb, b"<svg></svg>"])
    yield "POST", "/v1/variations", {"files": {"image": ("x.png", image, "image/png")}, "data": {"decoder_steps": "2"}}
    yield "POST", "/v1/variations", {"files": {"image": ("x.png", _png((8, 8)), "image/png")},
                                     "data": dict([rng.choice(BAD_FORM)])}
    yield "POST", "/v1/variations", {"data": {"num_images": "2"}}  # no file
    yield "POST", "/v1/variations", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}
    yield "POST", "/v1/variations", {"content": big, "headers": {"content-type": "multipart/form-data; boundary=x"}}
    yield "POST", "/v1/interpolate", {"data": rng.choice([{"prompt_a": "a"}, {"frames": "0", "prompt_a": "a", "prompt_b": "b"},
                                                          {"frames": "1000", "prompt_a": "a", "prompt_b": "b"},
                                                          {"prompt_a": "", "prompt_b": "b"}, {}])}
    yield "POST", "/v1/edit", {"files": {"image": ("x.png", _png((8, 8)), "image/png")},
                               "data": rng.choice([{"from_text": "a"}, {"from_text": "a", "to_text": "b", "thetas": "x,y"},
                                                   {"from_text": "a", "to_text": "b", "thetas": "2"},
                                                   {"from_text": "", "to_text": "b"}])}
    yield "POST", "/sdapi/v1/txt2img", {"json": rng.choice([{"prompt": "a", "steps": 0}, {"prompt": "a", "width": 100000},
                                                            {"prompt": "a", "batch_size": 1000}, {"prompt": "a", "cfg_scale": "x"},
                                                            {"prompt": ""}, {"prompt": "a", "n_iter": -1}, [1]])}
    yield rng.choice(["GET", "PUT"]), "/v1/generate", {}
    yield "GET", rng.choice(["/v1/jobs/" + os.urandom(4).hex(), "/v1/jobs/x/images/0.png", "/v1/jobs/x/images/abc.png",
                             "/v1/jobs/x/result", "/../../etc/passwd", "/static/../../etc/passwd", "/nope"]), {}
    yield "DELETE", "/v1/jobs/" + os.urandom(4).hex(), {}
    yield "raw", rng.choice([b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: abc\r\n\r\n{}", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"]), {}


def start_server(model_dir, *args, threads: int = 0, timeout: float = 120.0):
    """`unclip serve` in a subprocess on a free loopback port -> (process, base url), once /healthz answers."""
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "unclip", "serve", "--model", str(model_dir), "--port", str(port), *args]
    if threads:
        cmd += ["--threads", str(threads)]
    import tempfile

    log = tempfile.TemporaryFile()  # not a pipe: an unread pipe fills up and blocks the server's logging
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError("server exited: " + log.read().decode(errors="replace")[-3000:])
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s")


def fuzz(url: str, n: int = 500, seed: int = 0, api_key: str | None = None) -> dict:
    import httpx

    rng = random.Random(seed)
    big = b"x" * (9 * 2**20)
    bomb = _png((5000, 4000), mode="1")
    headers = {"X-API-Key": api_key} if api_key else {}
    counts = {"requests": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "errors": 0, "by_status": {}, "unexpected": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        cases = _cases(rng, big, bomb)
        while counts["requests"] < n:
            try:
                method, path, kw = next(cases)
            except StopIteration:
                cases = _cases(rng, big, bomb)
                continue
            if api_key and rng.random() < 0.1:  # bad keys
                kw = {**kw, "headers": {**kw.get("headers", {}), "X-API-Key": rng.choice(["", "wrong", api_key + "x"])}}
            elif headers:
                kw = {**kw, "headers": {**kw.get("headers", {}), **headers}}
            counts["requests"] += 1
            try:
                status = _raw(url, path) if method == "raw" else client.request(method, path, **kw).status_code
            except (httpx.HTTPError, OSError) as e:
                counts["errors"] += 1
                counts["unexpected"].append(f"{method} {str(path)[:60]}: {type(e).__name__}")
                continue
            counts[f"{status // 100}xx"] += 1
            counts["by_status"][status] = counts["by_status"].get(status, 0) + 1
            if not 400 <= status < 500:
                counts["unexpected"].append(f"{method} {str(path)[:60]} {str(kw)[:120]} -> {status}")
        counts["healthy_after"] = client.get("/healthz").json().get("worker_alive", False)
    return counts


def _raw(url: str, data: bytes) -> int:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 400 if not reply else 0


def load(url: str, clients: int = 4, seconds: float = 20.0, body: dict | None = None, api_key: str | None = None) -> dict:
    """N clients each submit a job, poll it to the end, and repeat, for `seconds`."""
    import httpx

    body = body or GOOD
    headers = {"X-API-Key": api_key} if api_key else {}
    lat, lock = [], threading.Lock()
    stats = {"submitted": 0, "completed": 0, "429": 0, "5xx": 0, "other_4xx": 0, "errors": 0, "timeouts": 0}
    end = time.time() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
            while time.time() < end:
                t = time.time()
                try:
                    r = c.post("/v1/generate", json=body)
                except httpx.TimeoutException:
                    stats["timeouts"] += 1
                    continue
                except httpx.HTTPError:
                    stats["errors"] += 1
                    continue
                if r.status_code == 429:
                    with lock:
                        stats["429"] += 1
                    time.sleep(min(float(r.headers.get("retry-after", 1)), 1.0))
                    continue
                if r.status_code >= 500:
                    stats["5xx"] += 1
                    continue
                if r.status_code != 202:
                    stats["other_4xx"] += 1
                    continue
                with lock:
                    stats["submitted"] += 1
                job = r.json()
                while job["status"] in ("queued", "running"):
                    time.sleep(0.05)
                    job = c.get(f"/v1/jobs/{job['id']}").json()
                if job["status"] == "done":
                    with lock:
                        stats["completed"] += 1
                        lat.append(time.time() - t)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lat.sort()

    def pct(q):
        return round(lat[min(int(q * len(lat)), len(lat) - 1)], 3) if lat else None

    return {"clients": clients, "seconds": seconds, **stats, "p50_s": pct(0.5), "p95_s": pct(0.95),
            "jobs_per_s": round(stats["completed"] / seconds, 3)}
