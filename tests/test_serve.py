"""The server through a real uvicorn process on loopback, and its page in headless Debian chromium."""

import base64
import io
import json
import os
import time

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")


def _start(model_dir, *args):
    from unclip.serve.fuzz import start_server

    return start_server(model_dir, *args, threads=1)


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a decoder guidance of its own (1.5), so defaults that ignore it show."""
    import shutil

    d = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(tiny_model_dir, d)
    cfg = d / "decoder_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "guidance_scale": 1.5}))
    return d


@pytest.fixture(scope="module")
def server(served_model):
    proc, url = _start(served_model, "--max-queue", "2", "--max-images", "4", "--max-steps", "1000",
                       "--max-upload-mb", "1", "--max-pixels", "1000000", "--allowed-host", "Proxy.example")
    yield url
    proc.terminate()
    proc.wait(10)


def _wait(url, job, client=httpx, headers=None, timeout=120):
    t = time.time()
    while job["status"] in ("queued", "running"):
        assert time.time() - t < timeout, job
        time.sleep(0.05)
        job = client.get(f"{url}/v1/jobs/{job['id']}", headers=headers).json()
    return job


def _png_bytes(size=(24, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buf, "PNG")
    return buf.getvalue()


GEN = {"prompt": "a grinning cat, 3D style", "num_images": 2, "seed": 3, "prior_steps": 2, "decoder_steps": 2,
       "upsampler_steps": 2}


def test_health_info_and_openapi(server):
    assert httpx.get(server + "/healthz").json()["status"] == "ok"
    info = httpx.get(server + "/v1/info").json()
    assert info["limits"]["max_images"] == 4 and info["model"]["image_size"] == 64
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    assert {"/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/progress", "/v1/jobs/{job_id}"} <= set(paths)
    assert "<title>unclip</title>" in httpx.get(server + "/").text


def test_generate_job_png_with_parameters_and_base64_result(server):
    r = httpx.post(server + "/v1/generate", json=GEN)
    assert r.status_code == 202
    job = _wait(server, r.json())
    assert job["status"] == "done" and len(job["images"]) == 2 and job["progress"] == 1.0
    png = httpx.get(server + job["images"][0])
    assert png.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(png.content))
    params = json.loads(im.text["parameters"])
    assert params["prompt"] == GEN["prompt"] and params["seed"] == 3 and params["decoder_steps"] == 2
    assert "trainedAlgorithmicMedia" in im.text["DigitalSourceType"]
    result = httpx.get(f"{server}/v1/jobs/{job['id']}/result").json()
    assert base64.b64decode(result["images"][0]) == png.content
    again = _wait(server, httpx.post(server + "/v1/generate", json=GEN).json())  # same seed: same bytes
    assert httpx.get(server + again["images"][0]).content == png.content
    early = _wait(server, httpx.post(server + "/v1/generate", json={**GEN, "rerank": 2, "rerank_at": 1}).json())
    params = httpx.get(f"{server}/v1/jobs/{early['id']}/result").json()["parameters"]
    assert early["status"] == "done" and len(early["images"]) == 2 and (params["rerank"], params["rerank_at"]) == (2, 1)


def test_variations_interpolate_and_edit_jobs(server):
    from conftest import NPM

    emoji = (NPM / "emoji-datasource-google/package/img/google/64/1f680.png").read_bytes()
    files = {"image": ("rocket.png", emoji, "image/png")}
    v = httpx.post(server + "/v1/variations", files=files, data={"num_images": "2", "decoder_steps": "2", "seed": "1"})
    assert v.status_code == 202, v.text
    assert len(_wait(server, v.json())["images"]) == 2
    inv = httpx.post(server + "/v1/variations", files=files, data={"num_images": "1", "decoder_steps": "2", "seed": "1",
                                                                   "eta": "0.5", "inversion": "true"})
    done = _wait(server, inv.json())
    params = httpx.get(f"{server}/v1/jobs/{done['id']}/result").json()["parameters"]
    assert params["inversion"] is True and params["decoder_guidance_scale"] == 1.0  # from the inverted x_T, at its guidance
    i = httpx.post(server + "/v1/interpolate", data={"prompt_a": "rocket", "prompt_b": "pizza", "frames": "3",
                                                     "decoder_steps": "2"})
    assert len(_wait(server, i.json())["images"]) == 3
    two = {"image_a": ("a.png", emoji, "image/png"), "image_b": ("b.png", _png_bytes(), "image/png")}
    assert _wait(server, httpx.post(server + "/v1/interpolate", files=two, data={"frames": "2", "decoder_steps": "2"}).json())["status"] == "done"
    e = httpx.post(server + "/v1/edit", files=files, data={"from_text": "rocket", "to_text": "red rocket",
                                                          "thetas": "0,0.5", "decoder_steps": "2"})
    done = _wait(server, e.json())
    assert len(done["images"]) == 2
    params = httpx.get(f"{server}/v1/jobs/{done['id']}/result").json()["parameters"]
    assert params["decoder_guidance_scale"] == 1.0 and params["precision"] == "fp32"  # an inversion's own guidance


def test_automatic1111_txt2img_progress_and_samplers(server):

    r = httpx.post(server + "/sdapi/v1/txt2img", json={"prompt": "red heart", "steps": 3, "cfg_scale": 5, "seed": 7,
                                                       "width": 512, "height": 512, "batch_size": 2,
                                                       "sampler_name": "DPM++ 2M", "restore_faces": False}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 2
    Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).verify()
    info = json.loads(body["info"])
    assert info["seed"] == 7 and info["sampler"] == "dpm++" and info["width"] == 64
    assert info["decoder_guidance_scale"] == 5
    r = httpx.post(server + "/sdapi/v1/txt2img", json={"prompt": "red heart", "steps": 2, "seed": 7}, timeout=120)
    assert r.status_code == 200, r.text  # no cfg_scale: the model's own guidance, not A1111's 7 or a fixed 8
    assert json.loads(r.json()["info"])["decoder_guidance_scale"] == 1.5
    p = httpx.get(server + "/sdapi/v1/progress").json()
    assert set(p) >= {"progress", "eta_relative", "state", "current_image"} and 0 <= p["progress"] <= 1
    assert {s["name"] for s in httpx.get(server + "/sdapi/v1/samplers").json()} == {"DDPM", "DDIM", "DPM++ 2M"}


@pytest.mark.parametrize("body,field", [
    ({**GEN, "prompt": "  "}, "prompt: must not be empty"), ({**GEN, "num_images": 5}, "num_images: must be between 1 and 4"),
    ({**GEN, "decoder_steps": 5000}, "decoder_steps"), ({**GEN, "sampler": "euler"}, "unknown 'euler'"),
    ({**GEN, "prompt": "x" * 401}, "at most 400"), ({**GEN, "decoder_guidance_scale": -1}, "decoder_guidance_scale"),
    ({**GEN, "bogus": 1}, "bogus"), ({**GEN, "num_images": "many"}, "num_images"),
    ({**GEN, "rerank": 5}, "rerank: must be between 1 and 4"),
    ({**GEN, "rerank_at": 1}, "rerank_at: compares rerank candidates"),
    ({**GEN, "rerank": 2, "rerank_at": 3}, "rerank_at: must be between 1 and 2"),
])
def test_bad_requests_are_422_naming_the_field(server, body, field):
    r = httpx.post(server + "/v1/generate", json=body)
    assert r.status_code == 422 and field in r.text, r.text


def test_uploads_oversized_bombs_and_non_images_are_refused(server):
    def vary(data):
        return httpx.post(server + "/v1/variations", files={"image": ("x.png", data, "image/png")}, data={"decoder_steps": "2"})

    assert vary(b"\x89PNG not an image").status_code == 422
    bomb = _png_bytes((2000, 1000), mode="1")  # 2 Mpx over the 1 Mpx limit, a few kB on disk
    r = vary(bomb)
    assert r.status_code == 422 and "pixel limit" in r.text and len(bomb) < 20_000
    r = vary(os.urandom(2 * 2**20))
    assert r.status_code == 413
    strip = _png_bytes((4097, 8), mode="1")  # 33 kpx: under the pixel limit, over the side limit (4096)
    r = vary(strip)
    assert r.status_code == 422 and "side limit" in r.text
    assert httpx.get(server + "/healthz").json()["worker_alive"]


def test_text_that_is_not_unicode_and_unknown_a1111_samplers_are_422(server):
    body = json.dumps({**GEN, "prompt": "a \ud800 cat"})  # a lone surrogate, as a JSON escape
    r = httpx.post(server + "/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid Unicode" in r.text
    r = httpx.post(server + "/sdapi/v1/txt2img", json={"prompt": "red heart", "sampler_name": "Euler a"})
    assert r.status_code == 422 and "sampler_name: unknown 'Euler a'" in r.text
    r = httpx.post(server + "/v1/interpolate", files={"image_a": ("a.png", _png_bytes(), "image/png")},
                   data={"prompt_a": "cat", "prompt_b": "dog"})
    assert r.status_code == 422 and "not both" in r.text


def test_requests_from_other_web_origins_and_hosts_are_refused(server):
    r = httpx.post(server + "/v1/generate", json=GEN, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.text
    assert httpx.post(server + "/sdapi/v1/interrupt", headers={"Origin": "null"}).status_code == 403
    r = httpx.post(server + "/v1/generate", json={**GEN, "prompt": ""}, headers={"Origin": server})
    assert r.status_code == 422  # its own origin gets through (to the prompt check)
    r = httpx.get(server + "/healthz", headers={"Host": "evil.example"})  # DNS rebinding onto loopback
    assert r.status_code == 400 and "unexpected Host" in r.text
    assert httpx.get(server.replace("127.0.0.1", "localhost") + "/healthz").status_code == 200
    for host in ("proxy.example", "PROXY.example:443"):  # --allowed-host: what a reverse proxy here forwards
        assert httpx.get(server + "/healthz", headers={"Host": host}).status_code == 200


def test_allowed_host_names_are_normalised_or_refused():
    from unclip.serve import host_names

    assert host_names(["Proxy.example:8443", "[fd00::1]", "box", "FD00::1", "::1"]) == (
        "proxy.example", "fd00::1", "box", "fd00::1", "::1")
    for bad in ("", "a/b", "user@host", ":80", "a:b:c", "host:abc", "host:99999", "exa\tmple"):
        with pytest.raises(ValueError, match="is not a host name"):
            host_names([bad])


def test_limits_must_be_positive():
    from unclip.cli import build_parser
    from unclip.serve.app import Limits

    with pytest.raises(ValueError, match="max_queue=0"):
        Limits(max_queue=0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-queue", "0"])
    assert build_parser().parse_args(["serve", "--max-upload-mb", "0.5"]).max_upload_mb == 0.5


def test_cancel_and_queue_full_is_429_with_retry_after(server):
    long = {**GEN, "num_images": 4, "decoder_steps": 1000, "prior_steps": 1000}
    jobs = [httpx.post(server + "/v1/generate", json=long) for _ in range(3)]
    codes = [j.status_code for j in jobs]
    for _ in range(5):  # the first may already have left the queue for the worker: fill it
        if 429 in codes:
            break
        jobs.append(httpx.post(server + "/v1/generate", json=long))
        codes.append(jobs[-1].status_code)
    full = next(j for j in jobs if j.status_code == 429)
    assert int(full.headers["retry-after"]) >= 1 and "queue is full" in full.text
    accepted = [j.json() for j in jobs if j.status_code == 202]
    queued = [j for j in accepted if httpx.get(f"{server}/v1/jobs/{j['id']}").json()["status"] == "queued"]
    assert queued and httpx.delete(f"{server}/v1/jobs/{queued[0]['id']}").json()["status"] == "cancelled"
    again = httpx.post(server + "/v1/generate", json=long)  # the cancelled job's slot is free at once
    assert again.status_code == 202, again.text
    jobs.append(again)
    for j in jobs:
        if j.status_code == 202:
            assert httpx.delete(f"{server}/v1/jobs/{j.json()['id']}").json()["id"] == j.json()["id"]
    done = [_wait(server, httpx.get(f"{server}/v1/jobs/{j.json()['id']}").json()) for j in jobs if j.status_code == 202]
    assert {d["status"] for d in done} == {"cancelled"}
    assert _wait(server, httpx.post(server + "/v1/generate", json=GEN).json())["status"] == "done"  # still serving


def test_unknown_jobs_are_404(server):
    assert httpx.get(server + "/v1/jobs/nope").status_code == 404
    assert httpx.get(server + "/v1/jobs/nope/images/0.png").status_code == 404


def test_api_key(tiny_model_dir):
    proc, url = _start(tiny_model_dir, "--api-key", "s3cret")
    try:
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.post(url + "/v1/generate", json=GEN).status_code == 401
        assert httpx.post(url + "/v1/generate", json=GEN, headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(url + "/v1/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        both = {"Authorization": "Bearer s3cret", "X-API-Key": "wrong"}  # either header may carry the key
        assert httpx.get(url + "/v1/info", headers=both).status_code == 200
        r = httpx.post(url + "/v1/generate", json=GEN, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 202
        assert httpx.get(f"{url}/v1/jobs/{r.json()['id']}").status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_fuzzed_requests_are_all_4xx_and_the_server_stays_healthy(server):
    from unclip.serve.fuzz import fuzz

    report = fuzz(server, n=150, seed=0)
    assert report["requests"] == 150 and report["5xx"] == 0 and report["errors"] == 0, report
    assert report["2xx"] == 0, report["unexpected"]
    assert httpx.get(server + "/healthz").json()["worker_alive"]


def test_the_page_generates_in_a_real_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("Debian chromium is not installed: `make test` installs it (scripts/install_system_deps.sh)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(server + "/")
        page.fill("#prompt", "a red heart")
        page.fill("#num", "2")
        page.fill("#steps", "2")
        page.click("#go")
        page.wait_for_selector("#gallery figure img", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#gallery figure img').length === 2 && "
                               "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 64)")
        assert "done" in page.inner_text("#status")
        page.click("#gallery figure:first-child button[data-act=vary]")
        page.wait_for_function("document.querySelectorAll('#gallery figure img').length === 6", timeout=60_000)
        page.click("#gallery figure:first-child button[data-act=close]")  # from the inverted x_T, eta 0.5
        page.wait_for_function("document.querySelectorAll('#gallery figure img').length === 10", timeout=60_000)
        assert "close variations: done" in page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000
