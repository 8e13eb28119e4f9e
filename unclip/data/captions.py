"""Captions: several phrasings per image from its label, tags, shortcodes, group and style.

The first caption is the canonical "LABEL, STYLE style" (the one a user types); the rest vary
word order, style names, shortcodes and tag combinations so the text side sees many ways of
asking for the same picture. Deterministic per image key.
"""

import hashlib
import random

from unclip.data.emojidb import EmojiInfo


def label_text(label: str) -> str:
    """'waving hand: light skin tone' -> 'waving hand, light skin tone'."""
    return label.replace(": ", ", ").replace(":", ",").strip()


def _rng(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big"))


def make_captions(info: EmojiInfo, style_names: tuple[str, ...], key: str) -> list[str]:
    rng = _rng(key)
    label = label_text(info.label)
    style = lambda: rng.choice(style_names)  # noqa: E731  (a fresh alias per phrasing)
    out = [
        f"{label}, {style_names[0]} style",
        f"a {style()} emoji of {label}",
        f"{label} in {style()} style",
    ]
    names = [s.replace("_", " ") for s in info.shortcodes if s.replace("_", " ") != info.base_label]
    if names:
        tone = f", {info.tone} skin tone" if info.tone and info.tone != "mixed" else ""
        out.append(f"{rng.choice(names)}{tone}, {style()} emoji")
    tags = [t for t in info.tags if t not in info.base_label]
    if tags:
        picked = rng.sample(tags, k=min(len(tags), rng.randint(1, 3)))
        out.append(f"{', '.join(picked)}: {label}, {style()}")
    if info.subgroup:
        out.append(f"{label}, a {info.subgroup} emoji from {info.group}, {style()} style")
    return list(dict.fromkeys(out))
