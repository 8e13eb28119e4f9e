"""Emoji metadata: what each codepoint sequence is called, tagged and grouped as.

Labels, tags, groups and shortcodes come from emojibase-data; OpenMoji's own catalogue adds the
extra icons it draws that Unicode does not define. A *concept* is a base emoji with skin tones
folded (`waving hand` and `waving hand: dark skin tone` share one), which is the unit the
held-out split is made of.
"""

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

TONES = {1: "light", 2: "medium-light", 3: "medium", 4: "medium-dark", 5: "dark"}
TONE_SUFFIXES = ("medium-light", "medium-dark", "default", "light", "medium", "dark")
SHORTCODE_SETS = ("github", "cldr", "iamcal", "emojibase")

# File names (Fluent, Iconify) that neither an emojibase label nor a shortcode spells the same way.
NAME_ALIASES = {
    "keycap-hashtag": "0023-20E3",
    "keycap-asterisk": "002A-20E3",
    "hugging-face": "1F917",
    "knocked-out-face": "1F635",
    "blackbird": "1F426-200D-2B1B",
    "man-with-bunny-ears": "1F46F-200D-2642",
    "woman-with-bunny-ears": "1F46F-200D-2640",
    "people-with-bunny-ears": "1F46F",
    "man-wrestling": "1F93C-200D-2642",
    "woman-wrestling": "1F93C-200D-2640",
    "people-wrestling": "1F93C",
    "man-merpeople": "1F9DC-200D-2642",
    "woman-merpeople": "1F9DC-200D-2640",
    "person-merpeople": "1F9DC",
    "person-with-bunny-ears": "1F46F",
    "phoenix-bird": "1F426-200D-1F525",
    "red-triangle": "1F53A",
    "pouting-face": "1F621",
}


@dataclass(frozen=True)
class EmojiInfo:
    hexcode: str  # normalised: upper case, FE0F removed, "-" separated
    concept: str  # hexcode of the base emoji (skin tones folded)
    label: str  # "waving hand: light skin tone"
    base_label: str  # "waving hand"
    tags: tuple[str, ...]
    shortcodes: tuple[str, ...]
    group: str  # "people & body"
    subgroup: str  # "hand fingers open"
    group_key: str  # "people-body"
    tone: str | None  # "light" ... "dark", "mixed", or None


def norm_hex(code: str) -> str:
    """'1f44b-1F3FB' / '23-fe0f-20e3' / '1f600_fe0f' -> '1F44B-1F3FB' / '0023-20E3' / '1F600'."""
    parts = re.split(r"[-_ ]", code.strip().upper())
    return "-".join(p.zfill(4) for p in parts if p and p != "FE0F")


def slug(text: str) -> str:
    text = re.sub(r"[’'`]", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _read_json(tar: tarfile.TarFile, name: str):
    f = tar.extractfile(name)
    if f is None:
        raise KeyError(name)
    return json.load(f)


class EmojiDB:
    """Lookup from normalised hexcode to EmojiInfo, and from an emoji's file name to a hexcode."""

    def __init__(self, infos: dict[str, EmojiInfo]):
        self.infos = infos
        self._names = self._name_index()

    def __len__(self) -> int:
        return len(self.infos)

    def get(self, hexcode: str) -> EmojiInfo | None:
        return self.infos.get(norm_hex(hexcode))

    @classmethod
    def from_packages(cls, emojibase_tgz: Path, openmoji_tgz: Path | None = None) -> "EmojiDB":
        with tarfile.open(emojibase_tgz) as tar:
            data = _read_json(tar, "package/en/data.json")
            messages = _read_json(tar, "package/en/messages.json")
            shortcodes = {}
            for name in SHORTCODE_SETS:
                try:
                    table = _read_json(tar, f"package/en/shortcodes/{name}.json")
                except KeyError:
                    continue
                for code, sc in table.items():
                    sc = [sc] if isinstance(sc, str) else sc
                    shortcodes.setdefault(norm_hex(code), []).extend(sc)
        groups = {g["order"]: (g["key"], g["message"]) for g in messages["groups"]}
        subgroups = {g["order"]: g["message"] for g in messages["subgroups"]}
        infos: dict[str, EmojiInfo] = {}
        for e in data:
            if "group" not in e:  # regional indicators and components carry no group
                continue
            gkey, gmsg = groups.get(e["group"], ("", ""))
            sub = subgroups.get(e.get("subgroup"), "")
            base = norm_hex(e["hexcode"])
            for v in [e] + e.get("skins", []):
                h = norm_hex(v["hexcode"])
                tone = v.get("tone")
                tone_name = None if tone is None else ("mixed" if isinstance(tone, list) else TONES.get(tone))
                infos[h] = EmojiInfo(
                    hexcode=h, concept=base, label=v["label"], base_label=e["label"],
                    tags=tuple(e.get("tags", ())), shortcodes=tuple(dict.fromkeys(shortcodes.get(base) or shortcodes.get(h, ()))),
                    group=gmsg, subgroup=sub, group_key=gkey, tone=tone_name,
                )
        if openmoji_tgz is not None:
            with tarfile.open(openmoji_tgz) as tar:
                _add_openmoji(infos, _read_json(tar, "package/data/openmoji.json"))
        return cls(infos)

    def _name_index(self) -> dict[str, str]:
        """Slug -> hexcode; labels win over shortcodes, and a slug two labels share is dropped."""
        index: dict[str, str] = {}
        bases = [(h, info) for h, info in self.infos.items() if info.tone is None]
        for keys_of in (lambda i: [slug(i.label)], lambda i: [slug(s) for s in i.shortcodes]):
            layer: dict[str, set[str]] = {}
            for h, info in bases:
                for key in keys_of(info):
                    layer.setdefault(key, set()).add(h)
            for key, hs in layer.items():
                if key not in index and len(hs) == 1:
                    index[key] = hs.pop()
        index.update(NAME_ALIASES)
        return index

    def name_hexcode(self, name: str) -> str | None:
        """Map an emoji name ('waving-hand-medium-dark', 'person-elf-default', 'ok-hand-dark-skin-tone',
        Fluent's and Iconify's file names) to a hexcode."""
        name = re.sub(r"-skin-tone$", "", name)
        base, tone = name, None
        for suffix in TONE_SUFFIXES:
            if name.endswith("-" + suffix):
                base, tone = name[: -len(suffix) - 1], suffix
                break
        h = self._name_base(base) or (self._name_base(name) if tone else None)
        if h is None:
            return None
        if tone in (None, "default") or self._name_base(name):
            return h
        for cand, info in self.infos.items():
            if info.concept == h and info.tone == tone and cand.startswith(h.split("-")[0]):
                if _tone_variant_of(cand, h):
                    return cand
        return None

    def _name_base(self, name: str) -> str | None:
        for cand in _name_candidates(name):
            if cand in self._names:
                return self._names[cand]
        return None


def _name_candidates(name: str):
    yield name
    fixed = name.replace("blonde", "blond").replace("oclock", "o-clock")
    yield fixed
    if fixed.startswith("flag-for-"):
        yield fixed.replace("flag-for-flag-", "flag-").replace("flag-for-", "flag-")
    if fixed.startswith("person-"):
        yield fixed[len("person-"):]
        yield fixed[len("person-"):] + "-person"
    for who in ("man", "woman"):
        if fixed.startswith(who + "-"):
            yield fixed[len(who) + 1:] + "-" + who


def _tone_variant_of(variant: str, base: str) -> bool:
    """True when `variant` is `base` with skin-tone modifiers (1F3FB-1F3FF) inserted."""
    parts = [p for p in variant.split("-") if p not in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")]
    return "-".join(parts) == base


def _add_openmoji(infos: dict[str, EmojiInfo], table: list[dict]) -> None:
    """Add OpenMoji's extra icons (not in Unicode) so their artwork gets labels too.

    An extra whose name a Unicode emoji already has (OpenMoji drew a 'donkey' before Unicode did)
    is left out: two concepts with one name would make captions ambiguous.
    """
    taken = {slug(i.label) for i in infos.values()}
    for e in table:
        h = norm_hex(e["hexcode"])
        label = (e.get("annotation") or "").strip()
        if h in infos or not label or slug(label) in taken:
            continue
        base = norm_hex(e.get("skintone_base_hexcode") or e["hexcode"])
        tags = [t.strip() for t in f"{e.get('tags', '')},{e.get('openmoji_tags', '')}".split(",") if t.strip()]
        tone = str(e.get("skintone") or "")
        infos[h] = EmojiInfo(
            hexcode=h, concept=base, label=label, base_label=label.split(":")[0],
            tags=tuple(dict.fromkeys(tags)), shortcodes=(),
            group=e.get("group", "").replace("-", " "), subgroup=e.get("subgroups", "").replace("-", " "),
            group_key=e.get("group", ""),
            tone=None if not tone else ("mixed" if "," in tone else TONES.get(int(tone)) if tone.isdigit() else None),
        )
