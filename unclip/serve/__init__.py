"""`unclip serve`: a REST API with a job queue and a web page (FastAPI + uvicorn; see app.py)."""


def serve(model_dir=None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, limits=None,
          threads: int = 0, log_level: str = "info", precision: str = "fp32", allowed_hosts=()) -> None:
    """allowed_hosts: Host names answered besides the loopback ones when bound to loopback (a reverse proxy's)."""
    import torch
    import uvicorn

    from unclip.models import default_model_dir
    from unclip.pipeline import UnCLIPPipeline
    from unclip.serve.app import create_app

    model_dir = model_dir or default_model_dir()
    if model_dir is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    if threads:
        torch.set_num_threads(threads)
    loopback = ("127.0.0.1", "localhost", "::1")
    allowed_hosts = host_names(allowed_hosts)
    if allowed_hosts and host not in loopback:
        import sys

        print(f"warning: --allowed-host has no effect: a server bound to {host} answers every Host name", file=sys.stderr)
    app = create_app(UnCLIPPipeline.from_pretrained(model_dir).set_precision(precision), model_dir, limits, api_key,
                     allowed_hosts=(*loopback, *allowed_hosts) if host in loopback else None)
    # loopback: no DNS rebinding
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, limit_concurrency=256)


def host_names(names) -> tuple[str, ...]:
    """`--allowed-host` values as the Host check compares them: lower case, without a port or IPv6 brackets."""
    from urllib.parse import urlsplit

    out = []
    for name in names:
        try:
            host = None if any(c in name for c in "/?#@ \\") else urlsplit(f"//{name}").hostname
        except ValueError:
            host = None
        if not host:
            raise ValueError(f"--allowed-host {name!r} is not a host name")
        out.append(host)
    return tuple(out)
