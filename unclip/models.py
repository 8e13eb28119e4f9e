"""Where models live: the shipped default and user directories."""

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped" / "emoji"  # package data, so a wheel carries it


def default_model_dir() -> Path | None:
    """The model shipped in the repository, when this checkout has it."""
    return SHIPPED if SHIPPED.is_dir() else None
