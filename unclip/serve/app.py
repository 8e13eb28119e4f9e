"""The REST API and web page (FastAPI), on one model worker with a bounded queue.

Native API (jobs): POST /v1/generate | /v1/variations | /v1/interpolate | /v1/edit -> 202 + a job;
GET /v1/jobs/{id} (progress, queue position), DELETE /v1/jobs/{id} (cancel),
GET /v1/jobs/{id}/images/{i}.png (PNG with its parameters), GET /v1/jobs/{id}/result (base64 JSON).
AUTOMATIC1111-compatible: POST /sdapi/v1/txt2img (waits, answers base64 PNGs),
GET /sdapi/v1/progress, POST /sdapi/v1/interrupt, GET /sdapi/v1/samplers.
Also GET /healthz, GET /v1/info, GET / (the page), /docs (OpenAPI).

Limits: queue full -> 429 with Retry-After (checked before an upload is decoded; cancelled jobs
leave the queue at once); caps on images, steps, frames, prompt length and resolution -> 422
naming the field; bodies over the upload limit -> 413, or 408 when not sent within
`body_timeout_s`; images over the pixel or side limit or unreadable -> 422 (the size is checked
before decoding, which runs off the event loop; accepted images are shrunk to `max_resolution`
at once); with an API key set, every /v1 and /sdapi route needs `Authorization: Bearer KEY` or
`X-API-Key: KEY` (401). POST/DELETE from another web origin (a browser's `Origin` header naming
another host) -> 403, and a server bound to loopback answers only loopback `Host` names (400), so a
web page the user visits can neither queue nor cancel jobs. No route reads a path from the request.
"""

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from unclip.sampling import SAMPLERS
from unclip.serve.jobs import Job, QueueFull, Worker

PAGE = Path(__file__).with_name("page.html")


@dataclass
class Limits:
    max_queue: int = 8
    max_images: int = 8
    max_rerank: int = 4  # decoder candidates per image (`rerank`): each multiplies the prior's and decoder's work
    max_steps: int = 100
    max_frames: int = 16
    max_prompt_chars: int = 400
    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    max_side: int = 4096  # an uploaded image's longer side (a 65536 x 256 strip passes the pixel limit)
    max_resolution: int = 1024  # A1111 width/height accepted (the model draws at its own size); uploads shrink to it
    sync_timeout_s: float = 600.0  # how long /sdapi/v1/txt2img waits
    body_timeout_s: float = 60.0  # how long a client may take to send its request body

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in asdict(self).items() if not v > 0]
        if bad:
            raise ValueError(f"server limits must be positive: {', '.join(bad)}")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    num_images: int = 4
    seed: int | None = None
    sampler: str = "ddim"
    prior_steps: int | None = None
    decoder_steps: int | None = None
    upsampler_steps: int | None = None
    prior_guidance_scale: float = Field(4.0, allow_inf_nan=False)
    decoder_guidance_scale: float | None = Field(None, allow_inf_nan=False)  # None: the model's default
    best_of: int = 2
    rerank: int = 1
    rerank_at: int | None = None  # the decoder step at which the rerank candidates are compared


class Txt2ImgRequest(BaseModel):
    """The fields of AUTOMATIC1111's /sdapi/v1/txt2img that mean something here; others are ignored."""
    model_config = ConfigDict(extra="ignore")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 25
    cfg_scale: float | None = Field(None, allow_inf_nan=False)  # None: the model's own decoder guidance
    width: int = 64
    height: int = 64
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = None


A1111_SAMPLERS = {"DDPM": "ddpm", "DDIM": "ddim", "DPM++ 2M": "dpm++"}


def _fail(field: str, message: str):
    raise HTTPException(422, detail=f"{field}: {message}")


def create_app(pipe, model_dir: Path | None = None, limits: Limits | None = None, api_key: str | None = None,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """allowed_hosts: the `Host` names answered (None: any; `serve` passes the loopback names when bound to loopback)."""
    from unclip.models import model_hash
    from unclip.sampling import DEFAULT_STEPS

    limits = limits or Limits()
    worker = Worker(pipe, max_queue=limits.max_queue)
    model = {"name": pipe.name, "hash": model_hash(model_dir) if model_dir else None,
             "image_size": (pipe.upsampler.config.sample_size if pipe.upsampler is not None
                            else pipe.decoder.config.sample_size)}
    app = FastAPI(title="unclip", version="1", description=__doc__)
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + 64 * 1024, timeout=limits.body_timeout_s)
    app.add_middleware(SameOrigin, allowed_hosts=allowed_hosts)
    app.state.worker, app.state.limits = worker, limits

    def auth(request: Request) -> None:
        if not api_key:
            return
        # headers arrive decoded as latin-1: back to their bytes, to compare with the key's UTF-8
        given = [request.headers.get("x-api-key") or ""]
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given.append(bearer[7:].strip())
        key = api_key.encode()
        if not any([secrets.compare_digest(g.encode("latin-1", "replace"), key) for g in given]):  # each compared
            raise HTTPException(401, detail="missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    # -- checks -------------------------------------------------------------------------------
    def check_text(field: str, text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape: it could not be written back
            _fail(field, "is not valid Unicode text (a lone surrogate)")
        return text

    def check_prompt(field: str, prompt: str) -> str:
        check_text(field, prompt)
        if not prompt.strip():
            _fail(field, "must not be empty")
        if len(prompt) > limits.max_prompt_chars:
            _fail(field, f"is {len(prompt)} characters; at most {limits.max_prompt_chars}")
        return prompt

    def check_int(field: str, v: int | None, lo: int, hi: int) -> None:
        if v is not None and not lo <= v <= hi:
            _fail(field, f"must be between {lo} and {hi}, got {v}")

    def check_float(field: str, v: float, lo: float, hi: float) -> None:
        if not lo <= v <= hi:
            _fail(field, f"must be between {lo} and {hi}, got {v}")

    def check_sampler(s: str) -> None:
        if s not in SAMPLERS:
            _fail("sampler", f"unknown {s!r}; samplers: {', '.join(SAMPLERS)}")

    def decode(data: bytes):
        """Decode, check the sides, and shrink to max_resolution: a job keeps only the small copy."""
        from PIL import Image

        from unclip.data.render import open_raster

        im = open_raster(data, limits.max_pixels, limits.max_side)  # both checked on the header, before decoding
        if max(im.size) > limits.max_resolution:
            im = im.convert("RGBA" if "A" in im.getbands() or im.mode in ("P", "1", "L") else "RGB")
            im.thumbnail((limits.max_resolution, limits.max_resolution), Image.Resampling.LANCZOS)
        return im

    async def read_image(field: str, upload: UploadFile):
        import anyio

        from unclip.data.render import CorruptImage

        queue_full()  # before any decoding: a full server answers 429 at once
        data = await upload.read()
        if not data:
            _fail(field, "empty file")
        try:
            return await anyio.to_thread.run_sync(decode, data)  # off the event loop
        except CorruptImage as e:
            _fail(field, str(e))

    def queue_full() -> None:
        if worker.queued() >= limits.max_queue:
            raise busy()

    def seed_of(seed: int | None) -> int:
        if seed is None or seed < 0:
            return secrets.randbelow(2**31)
        check_int("seed", seed, 0, 2**63 - 1)
        return seed

    def busy() -> HTTPException:
        return HTTPException(429, detail=f"the queue is full ({limits.max_queue} jobs); retry later",
                             headers={"Retry-After": str(_retry_after(worker))})

    def enqueue(job: Job) -> Job:
        try:
            return worker.submit(job)
        except QueueFull:
            raise busy() from None

    def submit(job: Job) -> JSONResponse:
        enqueue(job)
        return JSONResponse(job.public(worker.position(job)), status_code=202)

    def upsampler_steps(n: int | None = None) -> int:
        return (n or 7) if pipe.upsampler is not None else 0

    def common(seed: int, **extra) -> dict:
        return {"seed": seed, "model": model["name"], "model_hash": model["hash"], "precision": pipe.precision, **extra}

    # -- native API ---------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model["name"], "queued": worker.queued(),
                "running": worker.current is not None, "worker_alive": worker.thread.is_alive()}

    @app.get("/v1/info", dependencies=[Depends(auth)])
    def info():
        return {"model": model, "samplers": list(SAMPLERS), "default_steps": DEFAULT_STEPS, "limits": asdict(limits)}

    @app.post("/v1/generate", status_code=202, dependencies=[Depends(auth)])
    def generate(req: GenerateRequest):
        return submit(generate_job(req))

    def generate_job(req: GenerateRequest) -> Job:
        """A checked text-to-image job (not yet queued): /v1/generate and /sdapi/v1/txt2img."""
        import torch

        check_prompt("prompt", req.prompt)
        check_sampler(req.sampler)
        check_int("num_images", req.num_images, 1, limits.max_images)
        check_int("best_of", req.best_of, 1, 8)
        check_int("rerank", req.rerank, 1, limits.max_rerank)
        for f in ("prior_steps", "decoder_steps", "upsampler_steps"):
            check_int(f, getattr(req, f), 1, limits.max_steps)
        check_float("prior_guidance_scale", req.prior_guidance_scale, 0, 100)
        decoder_guidance = pipe.default_decoder_guidance(req.decoder_guidance_scale)
        check_float("decoder_guidance_scale", decoder_guidance, 0, 100)
        seed = seed_of(req.seed)
        d = DEFAULT_STEPS[req.sampler]
        steps = {f"{k}_steps": getattr(req, f"{k}_steps") or d[k] for k in ("prior", "decoder", "upsampler")}
        if req.rerank_at is not None and req.rerank == 1:
            _fail("rerank_at", "compares rerank candidates: give rerank > 1 with it")
        check_int("rerank_at", req.rerank_at, 1, steps["decoder_steps"])
        kw = dict(sampler=req.sampler, prior_guidance_scale=req.prior_guidance_scale,
                  decoder_guidance_scale=decoder_guidance, best_of=req.best_of,
                  **({"rerank": req.rerank} if req.rerank != 1 else {}),
                  **({"rerank_at": req.rerank_at} if req.rerank_at is not None else {}), **steps)
        params = common(seed, task="generate", prompt=req.prompt, num_images=req.num_images, **kw)
        total = steps["prior_steps"] + steps["decoder_steps"] + upsampler_steps(steps["upsampler_steps"])
        run = lambda p: p(req.prompt, req.num_images, generator=torch.Generator().manual_seed(seed), **kw).images  # noqa: E731
        return Job("generate", run, params, total)

    @app.post("/v1/variations", status_code=202, dependencies=[Depends(auth)])
    async def variations(image: UploadFile = File(...), num_images: int = Form(4), seed: int | None = Form(None),
                         eta: float = Form(1.0), decoder_steps: int = Form(25), decoder_guidance_scale: float | None = Form(None),
                         inversion: bool = Form(False)):
        import torch

        check_int("num_images", num_images, 1, limits.max_images)
        check_int("decoder_steps", decoder_steps, 1, limits.max_steps)
        check_float("eta", eta, 0, 1)
        # None: the model's own, or 1 when decoding the image's inverted x_T (as `unclip vary --inversion`)
        decoder_guidance_scale = pipe.default_decoder_guidance(decoder_guidance_scale, inverted=inversion)
        check_float("decoder_guidance_scale", decoder_guidance_scale, 0, 100)
        im, seed = await read_image("image", image), seed_of(seed)
        params = common(seed, task="variations", eta=eta, decoder_steps=decoder_steps,
                        decoder_guidance_scale=decoder_guidance_scale, **({"inversion": True} if inversion else {}))
        run = lambda p: p.variations(im, num_images, eta=eta, use_inversion=inversion,  # noqa: E731
                                     decoder_steps=decoder_steps, decoder_guidance_scale=decoder_guidance_scale,
                                     generator=torch.Generator().manual_seed(seed)).images
        work = decoder_steps * (2 if inversion else 1) + upsampler_steps()  # the inversion runs the decoder's steps too
        return submit(Job("variations", run, params, work))

    @app.post("/v1/interpolate", status_code=202, dependencies=[Depends(auth)])
    async def interpolate(image_a: UploadFile | None = File(None), image_b: UploadFile | None = File(None),
                          prompt_a: str | None = Form(None), prompt_b: str | None = Form(None), frames: int = Form(8),
                          seed: int | None = Form(None), decoder_steps: int = Form(25),
                          decoder_guidance_scale: float | None = Form(None)):
        import torch

        check_int("frames", frames, 2, limits.max_frames)
        check_int("decoder_steps", decoder_steps, 1, limits.max_steps)
        two_images = image_a is not None and image_b is not None
        if (image_a is not None or image_b is not None) and (prompt_a is not None or prompt_b is not None):
            _fail("image_a", "give two images or two prompts, not both")
        decoder_guidance_scale = pipe.default_decoder_guidance(decoder_guidance_scale, inverted=two_images)
        check_float("decoder_guidance_scale", decoder_guidance_scale, 0, 100)
        if two_images:
            a, b = await read_image("image_a", image_a), await read_image("image_b", image_b)
            total = 3 * decoder_steps
        elif prompt_a is not None and prompt_b is not None:
            a, b = check_prompt("prompt_a", prompt_a), check_prompt("prompt_b", prompt_b)
            total = 25 + decoder_steps
        else:
            _fail("image_a", "give two images (image_a, image_b) or two prompts (prompt_a, prompt_b)")
        seed = seed_of(seed)
        params = common(seed, task="interpolate", frames=frames, decoder_steps=decoder_steps,
                        decoder_guidance_scale=decoder_guidance_scale,
                        **({"prompt_a": a, "prompt_b": b} if isinstance(a, str) else {}))
        run = lambda p: p.interpolate(a, b, frames, decoder_steps=decoder_steps,  # noqa: E731
                                      decoder_guidance_scale=decoder_guidance_scale,
                                      generator=torch.Generator().manual_seed(seed)).images
        return submit(Job("interpolate", run, params, total + upsampler_steps()))

    @app.post("/v1/edit", status_code=202, dependencies=[Depends(auth)])
    async def edit(image: UploadFile = File(...), from_text: str = Form(...), to_text: str = Form(...),
                   thetas: str = Form("0,0.1,0.2,0.3,0.4,0.5"), seed: int | None = Form(None),
                   decoder_steps: int = Form(25), decoder_guidance_scale: float | None = Form(None)):
        import torch

        check_prompt("from_text", from_text)
        check_prompt("to_text", to_text)
        check_int("decoder_steps", decoder_steps, 1, limits.max_steps)
        decoder_guidance_scale = pipe.default_decoder_guidance(decoder_guidance_scale, inverted=True)  # None: 1
        check_float("decoder_guidance_scale", decoder_guidance_scale, 0, 100)
        try:
            ts = [float(t) for t in thetas.split(",")]
        except ValueError:
            _fail("thetas", f"comma-separated numbers, got {thetas[:40]!r}")
        if not 1 <= len(ts) <= limits.max_frames or not all(0 <= t <= 1 for t in ts):
            _fail("thetas", f"1 to {limits.max_frames} numbers between 0 and 1")
        im, seed = await read_image("image", image), seed_of(seed)
        params = common(seed, task="text_diff", **{"from": from_text, "to": to_text}, thetas=ts, decoder_steps=decoder_steps,
                        decoder_guidance_scale=decoder_guidance_scale)
        run = lambda p: p.text_diff(im, from_text, to_text, ts, decoder_steps=decoder_steps,  # noqa: E731
                                    decoder_guidance_scale=decoder_guidance_scale,
                                    generator=torch.Generator().manual_seed(seed)).images
        return submit(Job("edit", run, params, 2 * decoder_steps + upsampler_steps()))

    def job_or_404(job_id: str) -> Job:
        job = worker.get(job_id)
        if job is None:
            raise HTTPException(404, detail=f"no job {job_id[:32]!r} (finished jobs are kept for a while, then dropped)")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(auth)])
    def job_status(job_id: str):
        job = job_or_404(job_id)
        return job.public(worker.position(job))

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(auth)])
    def job_cancel(job_id: str):
        job = job_or_404(job_id)
        worker.cancel(job)
        return job.public(worker.position(job))

    @app.get("/v1/jobs/{job_id}/images/{index}.png", dependencies=[Depends(auth)],
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def job_image(job_id: str, index: int):
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, detail=f"job is {job.status}")
        if not 0 <= index < len(job.images):
            raise HTTPException(404, detail=f"job has {len(job.images)} images")
        return Response(job.images[index], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="unclip-{job.id}-{index}.png"'})

    @app.get("/v1/jobs/{job_id}/result", dependencies=[Depends(auth)])
    def job_result(job_id: str):
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, detail=f"job is {job.status}" + (f": {job.error}" if job.error else ""))
        return {"id": job.id, "images": [base64.b64encode(b).decode() for b in job.images], "parameters": job.parameters}

    # -- AUTOMATIC1111 compatibility ----------------------------------------------------------
    @app.post("/sdapi/v1/txt2img", dependencies=[Depends(auth)])
    async def txt2img(req: Txt2ImgRequest, request: Request):
        import anyio

        n = req.batch_size * req.n_iter
        check_text("negative_prompt", req.negative_prompt)
        if req.sampler_name is not None and req.sampler_name not in A1111_SAMPLERS:
            _fail("sampler_name", f"unknown {check_text('sampler_name', req.sampler_name)!r}; "
                                  f"samplers: {', '.join(A1111_SAMPLERS)}")
        check_int("batch_size", req.batch_size, 1, limits.max_images)
        check_int("n_iter", req.n_iter, 1, limits.max_images)
        check_int("batch_size * n_iter", n, 1, limits.max_images)
        check_int("steps", req.steps, 1, limits.max_steps)
        check_int("width", req.width, 1, limits.max_resolution)
        check_int("height", req.height, 1, limits.max_resolution)
        if req.cfg_scale is not None:
            check_float("cfg_scale", req.cfg_scale, 0, 100)
        sampler = A1111_SAMPLERS[req.sampler_name or "DDIM"]
        job = enqueue(generate_job(GenerateRequest(prompt=req.prompt, num_images=n, seed=req.seed, sampler=sampler,
                                                   decoder_steps=req.steps, decoder_guidance_scale=req.cfg_scale)))
        deadline = time.monotonic() + limits.sync_timeout_s
        while not job.done.is_set():  # polled on the event loop: a waiting client holds no thread
            if await request.is_disconnected():
                worker.cancel(job)  # nobody will read the result
                raise HTTPException(499, detail="client disconnected")
            if time.monotonic() > deadline:
                worker.cancel(job)
                raise HTTPException(503, detail="timed out waiting for the model", headers={"Retry-After": "30"})
            await anyio.sleep(0.05)
        if job.status != "done":  # cancelled by someone else: 409; failed in the model: a server fault
            raise HTTPException(409 if job.status == "cancelled" else 500, detail=f"job {job.status}: {job.error or ''}")
        info = {**job.parameters, "all_seeds": [job.parameters["seed"]] * n, "width": model["image_size"],
                "height": model["image_size"], "sampler_name": req.sampler_name or "DDIM", "job_id": job.id,
                "negative_prompt_ignored": bool(req.negative_prompt)}
        return {"images": [base64.b64encode(b).decode() for b in job.images], "parameters": req.model_dump(),
                "info": json.dumps(info)}

    @app.get("/sdapi/v1/progress", dependencies=[Depends(auth)])
    def a1111_progress():
        job = worker.current
        return {"progress": job.progress if job else 0.0, "eta_relative": (job.eta_seconds() or 0.0) if job else 0.0,
                "state": {"skipped": False, "interrupted": bool(job and job.cancel_requested), "job": job.id if job else "",
                          "job_count": worker.queued() + (1 if job else 0), "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
                          "job_no": 0, "sampling_step": job.steps_done if job else 0,
                          "sampling_steps": job.total_steps if job else 0},
                "current_image": None, "textinfo": None}

    @app.post("/sdapi/v1/interrupt", dependencies=[Depends(auth)])
    def a1111_interrupt():
        job = worker.current
        if job is not None:
            worker.cancel(job)
        return {}

    @app.get("/sdapi/v1/samplers", dependencies=[Depends(auth)])
    def a1111_samplers():
        return [{"name": name, "aliases": [ours], "options": {}} for name, ours in A1111_SAMPLERS.items()]

    # -- the page -----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return PAGE.read_text()

    return app


def _retry_after(worker: Worker) -> int:
    job = worker.current
    eta = job.eta_seconds() if job else None
    return max(1, int((eta or 5) + 5 * worker.queued()))


class SameOrigin:
    """ASGI middleware: refuse state-changing requests from other web origins (CSRF) and, bound to
    loopback, any `Host` but a loopback name (DNS rebinding). Clients that send no `Origin` (curl,
    scripts) are not affected; the page's own requests carry its own origin."""

    def __init__(self, app, allowed_hosts: tuple[str, ...] | None = None):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from urllib.parse import urlsplit

        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and (urlsplit(f"//{host}").hostname or "") not in self.allowed_hosts:
            return await _plain(send, 400, f"unexpected Host {host[:64]!r}; this server answers {', '.join(self.allowed_hosts)}")
        origin = headers.get(b"origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if urlsplit(origin.decode("latin-1")).netloc.lower() != host.lower():
                return await _plain(send, 403, "cross-origin request refused: call the API from its own page or without a browser")
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, and one not received within
    `timeout` seconds 408, before the app sees it."""

    def __init__(self, app, limit: int, timeout: float = 60.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _plain(send, 400, "invalid Content-Length")
            if int(length) > self.limit:
                return await _plain(send, 413, f"request body over {self.limit} bytes")
        import anyio

        buf, more = bytearray(), True
        with anyio.move_on_after(self.timeout) as scope_:
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                buf += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(buf) > self.limit:
                    return await _plain(send, 413, f"request body over {self.limit} bytes")
        if scope_.cancelled_caught:
            return await _plain(send, 408, f"request body not received within {self.timeout:g} s")
        body, replayed = bytes(buf), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _plain(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
