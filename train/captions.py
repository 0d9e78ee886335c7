"""Which of a sample's stored texts captions it in a given epoch.

Every sample of the shards carries its texts apart: ``web_texts`` (alt text
or title of each search result that found the image; the source is the
engine) and ``kg_texts`` (label, description, aliases, common and scientific
names, the taxonomic string, attributes), plus the default caption (the
``.txt``). A mix such as ``{web: 0.5, kg: 0.5}`` picks the group of
texts per sample, then one allowed text of that group; CLIP trained on a mix
of knowledge-graph texts and alt texts does better than on either alone.

The choice is a pure function of (seed, epoch, sample key): the same run sees
the same captions, every epoch sees others, and no state is shared between
loader processes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kg.errors import ConfigError

# The sources curate/captions.py writes in ``kg_texts``; common names carry
# their language (``common_name:en``), which a setting may name or leave off.
KG_SOURCES = (
    "label",
    "label_description",
    "alias",
    "common_name",
    "scientific_name",
    "taxonomic",
    "attribute",
)
GROUPS = ("web", "kg", "default")  # default: the sample's .txt caption


@dataclass
class CaptionConfig:
    """The mix of caption groups and the sources allowed within each."""

    mix: dict[str, float] = field(default_factory=lambda: {"web": 0.5, "kg": 0.5})
    kg_sources: list[str] | None = None  # None: all of KG_SOURCES
    web_sources: list[str] | None = None  # engines whose texts count; None: all

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        unknown = sorted(set(self.mix) - set(GROUPS))
        if unknown:
            raise ConfigError(
                f"train.data.captions.mix names {unknown}; the groups are "
                f"{', '.join(GROUPS)}, e.g. {{web: 0.5, kg: 0.5}}"
            )
        if any(weight < 0 for weight in self.mix.values()) or not any(
            weight > 0 for weight in self.mix.values()
        ):
            raise ConfigError(
                f"train.data.captions.mix={dict(self.mix)} needs weights >= 0 "
                "and at least one above 0"
            )
        unknown = sorted(
            source
            for source in self.kg_sources or ()
            if source_kind(source) not in KG_SOURCES
        )
        if unknown:
            raise ConfigError(
                f"train.data.captions.kg_sources names {unknown}; the shards hold "
                f"{', '.join(KG_SOURCES)}"
            )


@dataclass(frozen=True)
class Caption:
    """The chosen text and where it came from."""

    text: str
    group: str  # web | kg | default
    source: str  # alt, title, label, common_name, ..., or "txt"


def choose_caption(
    meta: Mapping[str, Any],
    default: str | None,
    config: CaptionConfig,
    seed: int,
    epoch: int,
    key: str,
) -> Caption | None:
    """One caption for a sample, or None when it has no text at all.

    ``meta`` is the sample's JSON (``web_texts``, ``kg_texts``: lists of
    ``{source, text}``); ``default`` its ``.txt``. A group of the mix without
    an allowed text in this sample drops out and the others share its weight;
    when none is left, the default caption is taken.
    """
    candidates = _candidates(meta, default, config)
    groups = [g for g, w in config.mix.items() if w > 0 and candidates.get(g)]
    if not groups:
        for fallback in ("default", "kg", "web"):
            if candidates[fallback]:
                return candidates[fallback][0]
        return None

    rng = caption_rng(seed, epoch, key)
    group = rng.choices(groups, weights=[config.mix[g] for g in groups])[0]
    return rng.choice(candidates[group])


def caption_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A generator fixed by (seed, epoch, key), equal in every process.

    Python's ``hash`` of a string differs between processes, so a digest is
    used.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8)
    return random.Random(int.from_bytes(digest.digest(), "big"))


def _candidates(
    meta: Mapping[str, Any], default: str | None, config: CaptionConfig
) -> dict[str, list[Caption]]:
    """The allowed texts of each group, blank ones left out."""
    web = _allowed(meta.get("web_texts"), config.web_sources, "web")
    kg = _allowed(meta.get("kg_texts"), config.kg_sources, "kg")
    fallback = (
        [Caption(default, "default", "txt")] if default and default.strip() else []
    )
    return {"web": web, "kg": kg, "default": fallback}


def _allowed(
    texts: Sequence[Mapping[str, Any]] | None, sources: list[str] | None, group: str
) -> list[Caption]:
    """The texts whose source is allowed (every source when ``sources`` is None)."""
    return [
        Caption(str(item["text"]), group, str(item.get("source")))
        for item in texts or ()
        if str(item.get("text") or "").strip()
        and (sources is None or allowed(str(item.get("source")), sources))
    ]


def source_kind(source: str) -> str:
    """A source without its language: ``common_name:en`` -> ``common_name``."""
    return source.split(":", 1)[0]


def allowed(source: str, sources: Sequence[str]) -> bool:
    """Whether ``sources`` names this source, or its kind (any language)."""
    return source in sources or source_kind(source) in sources
