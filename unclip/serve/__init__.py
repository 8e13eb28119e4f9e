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
                     allowed_hosts=(*loopback, *allowed_hosts) if host in loopback else None)  # loopback: no DNS rebinding
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, limit_concurrency=256)


def host_names(names) -> tuple[str, ...]:
    """`--allowed-host` values as the Host check compares them: lower case, without a port or IPv6 brackets."""
    return tuple(_host_name(name) for name in names)


def _host_name(name: str) -> str:
    import ipaddress
    from urllib.parse import urlsplit

    bad = ValueError(f"--allowed-host {name!r} is not a host name")
    if not name or any(c.isspace() or c in "/?#@\\" for c in name):
        raise bad
    try:
        return str(ipaddress.ip_address(name))  # a bare IPv6 address: its colons are no port
    except ValueError:
        pass
    if name.count(":") > 1 and not name.startswith("["):
        raise bad
    try:
        parts = urlsplit(f"//{name}")
        parts.port  # noqa: B018  (raises on a port that is no number or out of range)
    except ValueError:
        raise bad from None
    if not parts.hostname:
        raise bad
    return parts.hostname
