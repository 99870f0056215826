"""The device abstract ``a(t)`` (METHOD.md Sec. 1): a short, deterministic text of a prefix.

Template (parts without data are left out)::

    Recent items (newest first): <text of i_t>; <text of i_{t-1}>; ... (up to L items).
    Time: <weekday> <part of day>.            # when timestamps are real time
    Request: <the user's latest request>      # when the dataset has request text (ReDial)

Parts are joined by one space. An item's text is its ``item_text_fields`` joined by ``", "``
(:func:`recbole_scalrec.data.item_text.load_item_texts`). Time words come from the timestamp of
the newest item, in the dataset's local time zone (``timestamp_timezone``, daylight saving
included); they are left out when ``abstract_time_words`` or ``real_timestamps`` is False or the
data has no timestamps. Parts of day (local hour): night [0, 5), morning [5, 12), afternoon
[12, 17), evening [17, 21), night [21, 24). The request is the request text of the newest item's
interaction (ReDial: the seeker's words up to that mention), whitespace-stripped, as is (no
period added); an empty request is left out.

With ``abstract_rewrite: True`` the builder from :meth:`AbstractBuilder.from_config` returns
these texts rewritten by a small on-device LM (:mod:`recbole_scalrec.semantic.abstract_rewrite`).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence
from zoneinfo import ZoneInfo

import numpy as np

from recbole_scalrec.data.sequences import UserSequences

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def part_of_day(hour: int) -> str:
    if hour < 5:
        return "night"
    if hour < 12:
        return "morning"
    if hour < 17:
        return "afternoon"
    if hour < 21:
        return "evening"
    return "night"


class AbstractBuilder:
    """Builds ``a(t)`` for prefixes named by their flat prefix id."""

    def __init__(
        self,
        sequences: UserSequences,
        item_texts: Sequence[str],
        length: int = 10,
        time_words: bool = True,
        tz: str | None = "UTC",
        request_texts: Sequence[str] | None = None,
    ) -> None:
        self.sequences = sequences
        self.item_texts = list(item_texts)
        self.length = length
        self.time_words = time_words and sequences.times is not None
        self.tz = ZoneInfo(tz) if tz else timezone.utc
        self.request_texts = request_texts

    @classmethod
    def from_config(cls, config, sequences: UserSequences, item_texts, request_texts=None) -> "AbstractBuilder":
        """The template builder of the config; wrapped in a
        :class:`~recbole_scalrec.semantic.abstract_rewrite.RewrittenAbstracts` when ``abstract_rewrite`` is on
        (its ``build``/``settings`` have the same signatures)."""
        builder = cls(
            sequences,
            item_texts,
            length=config["abstract_length"],
            # an order index (real_timestamps False, e.g. ReDial) has no time of day
            time_words=bool(config["abstract_time_words"]) and config["real_timestamps"] is not False,
            tz=config["timestamp_timezone"] or "UTC",
            request_texts=request_texts,
        )
        if config["abstract_rewrite"]:
            from recbole_scalrec.semantic.abstract_rewrite import AbstractRewriter, RewrittenAbstracts

            return RewrittenAbstracts(builder, AbstractRewriter.from_config(config))
        return builder

    def settings(self) -> dict:
        """What changes the text (part of the semantic cache key)."""
        return {"length": self.length, "time_words": self.time_words, "tz": str(self.tz),
                "request": self.request_texts is not None, "template": 1}

    def build_one(self, prefix_id: int) -> str:
        seq = self.sequences
        start = int(seq.offsets[seq.user_of(np.array([prefix_id]))[0]])
        first = max(start, prefix_id - self.length + 1)
        titles = [self.item_texts[i] for i in seq.items[first : prefix_id + 1][::-1]]
        parts = ["Recent items (newest first): " + "; ".join(titles) + "."]
        if self.time_words:
            when = datetime.fromtimestamp(float(seq.times[prefix_id]), tz=timezone.utc).astimezone(self.tz)
            parts.append(f"Time: {WEEKDAYS[when.weekday()]} {part_of_day(when.hour)}.")
        if self.request_texts is not None:
            request = self.request_texts[prefix_id].strip()
            if request:
                parts.append(f"Request: {request}")
        return " ".join(parts)

    def build(self, prefix_ids: Sequence[int]) -> list[str]:
        return [self.build_one(int(p)) for p in prefix_ids]
