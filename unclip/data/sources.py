"""Source definitions (data in sources.json) and the resolution of a source name list."""

import json
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    version: str
    members: str  # tar path prefix of the artwork files (the icon set's JSON for "iconify")
    format: str  # "png" | "svg" | "webp" | "iconify" (one JSON of SVG bodies)
    naming: str  # "hexcode" (files named by codepoints) | "name" (named by emoji name)
    native_size: int | None  # None: vector, rendered at any size
    style: str
    style_names: tuple[str, ...]
    license: str
    commercial: bool
    attribution: str
    exclude: tuple[str, ...] = field(default_factory=tuple)  # emojibase group keys left out


def _table() -> dict:
    return json.loads(resources.files("unclip.data").joinpath("sources.json").read_text())


def all_sources() -> dict[str, Source]:
    out = {}
    for name, d in _table()["sources"].items():
        d = dict(d, style_names=tuple(d["style_names"]), exclude=tuple(d.get("exclude", ())))
        out[name] = Source(name=name, **d)
    return out


def metadata_packages() -> dict[str, dict]:
    return _table()["metadata"]


def default_source_names() -> list[str]:
    return list(_table()["default"])


def resolve(names: list[str] | None, allow_noncommercial: bool = False) -> list[Source]:
    """Source objects for `names` (default list when None), with clear errors."""
    table = all_sources()
    names = names or default_source_names()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown source {', '.join(map(repr, unknown))}; known sources: {', '.join(table)}")
    chosen = [table[n] for n in dict.fromkeys(names)]
    blocked = [s.name for s in chosen if not s.commercial and not allow_noncommercial]
    if blocked:
        raise ValueError(
            f"source {', '.join(blocked)} is licensed for non-commercial use only; "
            "pass --allow-noncommercial to include it"
        )
    return chosen
