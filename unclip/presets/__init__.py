"""Named model sizes per stage, as JSON data: `load_preset("decoder", "small")`."""

import json
from importlib import resources


def presets(stage: str) -> dict[str, dict]:
    path = resources.files("unclip.presets").joinpath(f"{stage}.json")
    if not path.is_file():
        raise ValueError(f"no presets for stage {stage!r}")
    return json.loads(path.read_text())


def load_preset(stage: str, name: str) -> dict:
    table = presets(stage)
    if name not in table:
        raise ValueError(f"unknown {stage} preset {name!r}; presets: {', '.join(table)}")
    return {k: v for k, v in table[name].items() if k != "note"}
