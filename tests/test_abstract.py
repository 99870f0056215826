"""The device abstract a(t) (recbole_scalrec/semantic/abstract.py, METHOD.md Sec. 1): exact template
strings on hand-built sequences, and known prefixes of the real datasets (foursquare and redial
converted from the shared copy, ml-100k from RecBole's shipped example)."""
import csv
import os
from datetime import datetime, timezone

import numpy as np
import pytest

from recbole_scalrec.semantic.abstract import AbstractBuilder, part_of_day
from recbole_scalrec.data.sequences import UserSequences

TEXTS = ["", "Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta"]
HEAD = "Recent items (newest first): "


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def make_sequences(users, times=None) -> UserSequences:
    """``users``: item lists per user; ``times``: matching timestamp lists, or None."""
    items = np.array([i for u in users for i in u], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(u) for u in users])]).astype(np.int64)
    flat_times = None if times is None else np.array([t for u in times for t in u], dtype=np.float64)
    return UserSequences(items, flat_times, np.arange(len(items)), offsets, np.arange(1, len(users) + 1), len(TEXTS))


def config_of(**overrides) -> dict:
    base = {"abstract_length": 10, "abstract_time_words": True, "timestamp_timezone": "UTC",
            "real_timestamps": True, "abstract_rewrite": False, "abstract_rewrite_model": None, "device": "cpu"}
    base.update(overrides)
    return base


# --------------------------------------------------------------------------------------------
# template on hand-built sequences
# --------------------------------------------------------------------------------------------
def test_newest_first_at_most_l_items_within_the_user():
    seq = make_sequences([[1, 2, 3, 4, 5], [6, 7]])
    b = AbstractBuilder(seq, TEXTS, length=3)
    assert b.build([0, 1, 4, 5, 6]) == [
        HEAD + "Alpha.",
        HEAD + "Beta; Alpha.",
        HEAD + "Epsilon; Delta; Gamma.",
        HEAD + "Zeta.",  # the second user's first prefix does not reach into the first user's items
        HEAD + "Eta; Zeta.",
    ]
    assert AbstractBuilder(seq, TEXTS, length=1).build_one(4) == HEAD + "Epsilon."
    assert AbstractBuilder(seq, TEXTS, length=10).build_one(4) == HEAD + "Epsilon; Delta; Gamma; Beta; Alpha."


def test_repeated_items_are_kept():
    seq = make_sequences([[2, 2, 3, 2]])
    assert AbstractBuilder(seq, TEXTS, length=10).build_one(3) == HEAD + "Beta; Gamma; Beta; Beta."


def test_time_words_utc_from_newest_item():
    # 2021-01-15 is a Friday; the first (older) item's time must not matter
    seq = make_sequences([[1, 2]], [[utc(2021, 1, 11, 3, 0), utc(2021, 1, 15, 13, 30)]])
    b = AbstractBuilder(seq, TEXTS, tz="UTC")
    assert b.build([0, 1]) == [HEAD + "Alpha. Time: Monday night.", HEAD + "Beta; Alpha. Time: Friday afternoon."]


def test_time_words_new_york_with_daylight_saving():
    stamps = [
        utc(2021, 1, 15, 16, 30),  # EST (UTC-5): Fri 11:30 -> morning
        utc(2021, 7, 15, 16, 30),  # EDT (UTC-4): Thu 12:30 -> afternoon (same UTC clock time)
        utc(2021, 1, 16, 3, 0),    # Sat 03:00 UTC = Fri 22:00 EST: weekday of local time
        utc(2021, 3, 14, 6, 59),   # 01:59 EST, just before the spring-forward jump
        utc(2021, 3, 14, 9, 0),    # 05:00 EDT (would be 04:00 without DST): Sun morning
        utc(2021, 11, 7, 9, 30),   # 04:30 EST after fall-back (05:30 had DST stayed): Sun night
    ]
    seq = make_sequences([[1]] * len(stamps), [[s] for s in stamps])
    b = AbstractBuilder(seq, TEXTS, tz="America/New_York")
    words = [t.split(" Time: ")[1] for t in b.build(range(len(stamps)))]
    assert words == ["Friday morning.", "Thursday afternoon.", "Friday night.", "Sunday night.",
                     "Sunday morning.", "Sunday night."]
    assert b.settings()["tz"] == "America/New_York"


@pytest.mark.parametrize("hour,minute,word", [
    (0, 0, "night"), (4, 59, "night"), (5, 0, "morning"), (11, 59, "morning"), (12, 0, "afternoon"),
    (16, 59, "afternoon"), (17, 0, "evening"), (20, 59, "evening"), (21, 0, "night"), (23, 59, "night"),
])
def test_part_of_day_boundaries(hour, minute, word):
    assert part_of_day(hour) == word
    seq = make_sequences([[3]], [[utc(2021, 6, 2, hour, minute)]])  # a Wednesday
    assert AbstractBuilder(seq, TEXTS, tz="UTC").build_one(0) == HEAD + f"Gamma. Time: Wednesday {word}."


def test_request_appended_and_empty_request_skipped():
    seq = make_sequences([[1, 2, 3]], [[utc(2021, 6, 2, 9), utc(2021, 6, 2, 10), utc(2021, 6, 2, 18)]])
    requests = ["  something funny  ", "", "   "]
    b = AbstractBuilder(seq, TEXTS, tz="UTC", request_texts=requests)
    assert b.build([0, 1, 2]) == [
        HEAD + "Alpha. Time: Wednesday morning. Request: something funny",
        HEAD + "Beta; Alpha. Time: Wednesday morning.",
        HEAD + "Gamma; Beta; Alpha. Time: Wednesday evening.",
    ]
    no_time = AbstractBuilder(seq, TEXTS, time_words=False, request_texts=requests)
    assert no_time.build_one(0) == HEAD + "Alpha. Request: something funny"
    assert b.settings()["request"] is True and AbstractBuilder(seq, TEXTS).settings()["request"] is False


def test_no_time_words_when_off_or_without_timestamps():
    timed = make_sequences([[1, 2]], [[utc(2021, 6, 2, 9), utc(2021, 6, 2, 10)]])
    untimed = make_sequences([[1, 2]])
    assert AbstractBuilder(timed, TEXTS, time_words=False).build_one(1) == HEAD + "Beta; Alpha."
    b = AbstractBuilder(untimed, TEXTS, time_words=True)
    assert b.build_one(1) == HEAD + "Beta; Alpha."
    assert b.settings()["time_words"] is False


def test_from_config_keys():
    seq = make_sequences([[1, 2]], [[utc(2021, 6, 2, 9), utc(2021, 1, 15, 16, 30)]])
    b = AbstractBuilder.from_config(config_of(abstract_length=1, timestamp_timezone="America/New_York"), seq, TEXTS)
    assert type(b) is AbstractBuilder
    assert b.build_one(1) == HEAD + "Beta. Time: Friday morning."
    # an order index (ReDial) is no time of day, whatever abstract_time_words says
    assert AbstractBuilder.from_config(config_of(real_timestamps=False), seq, TEXTS).build_one(1) == HEAD + "Beta; Alpha."
    assert AbstractBuilder.from_config(config_of(abstract_time_words=False), seq, TEXTS).build_one(1) == HEAD + "Beta; Alpha."
    # no zone configured: UTC
    assert AbstractBuilder.from_config(config_of(timestamp_timezone=None), seq, TEXTS).build_one(1).endswith(
        "Time: Friday afternoon.")


def test_settings_keys_stable_and_discriminating():
    seq = make_sequences([[1, 2]], [[utc(2021, 6, 2, 9), utc(2021, 6, 2, 10)]])
    s = AbstractBuilder(seq, TEXTS).settings()
    # these keys go into existing semantic cache keys: changing them invalidates caches
    assert s == {"length": 10, "time_words": True, "tz": "UTC", "request": False, "template": 1}
    assert AbstractBuilder(seq, TEXTS, length=5).settings() != s
    assert AbstractBuilder(seq, TEXTS, tz="America/New_York").settings() != s
    assert AbstractBuilder(seq, TEXTS, time_words=False).settings() != s


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
def _load(name: str, data_path: str | None):
    from recbole.data import create_dataset

    from recbole_scalrec.config import Config
    from recbole_scalrec.data.item_text import load_item_texts, load_request_texts

    config_dict = {"state": "WARNING"}
    if data_path is not None:
        config_dict["data_path"] = data_path
    config = Config(model="SASRec", dataset=name, config_dict=config_dict)
    dataset = create_dataset(config)
    seq = UserSequences.from_dataset(dataset)
    builder = AbstractBuilder.from_config(config, seq, load_item_texts(config, dataset),
                                          load_request_texts(config, dataset, seq.rows))
    return config, dataset, seq, builder


def _raw_history(folder: str, name: str, user: str, text_fields, request_field=None):
    """A user's (item text, request) in time order, read straight from the atomic files."""
    def rows(path):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = [h.split(":", 1)[0] for h in next(reader)]
            return [dict(zip(header, r)) for r in reader]

    items = {r["item_id"]: ", ".join(r[f].strip() for f in text_fields if r[f].strip())
             for r in rows(os.path.join(folder, f"{name}.item"))}
    mine = [r for r in rows(os.path.join(folder, f"{name}.inter")) if r["user_id"] == user]
    mine.sort(key=lambda r: float(r["timestamp"]))  # stable: ties keep the file order
    return [(items[r["item_id"]], r.get(request_field, "") if request_field else "") for r in mine]


def _prefix(dataset, seq, user: str, t: int) -> int:
    internal = dataset.field2token_id[dataset.uid_field][user]
    return int(seq.offsets[int(np.searchsorted(seq.users, internal))] + t - 1)


def _expected_items(history, t: int, length: int) -> str:
    return HEAD + "; ".join(text for text, _ in history[:t][::-1][:length]) + "."


@pytest.fixture(scope="module")
def converted(shared_datasets, tmp_path_factory):
    from recbole_scalrec.data.prepare import SHARED_SOURCES, prepare

    root = tmp_path_factory.mktemp("abstract_data")
    done = {}

    def get(name):
        if name not in done:
            prepare(name, str(shared_datasets / SHARED_SOURCES[name]), str(root / name))
            done[name] = _load(name, str(root))
        return done[name]

    return get


def test_foursquare_known_prefixes(converted):
    config, dataset, seq, b = converted("foursquare")
    assert config["timestamp_timezone"] == "America/New_York"
    history = _raw_history(config["data_path"], "foursquare", "1", ["venue_category", "area"])
    # user 1's 1st check-in: 2012-04-07 17:42 UTC = Sat 13:42 EDT; 5th: 2012-04-14 01:11 UTC = Fri 21:11 EDT
    first = b.build_one(_prefix(dataset, seq, "1", 1))
    assert first == _expected_items(history, 1, 10) + " Time: Saturday afternoon."
    assert first == HEAD + "American Restaurant, Upper West Side, Manhattan. Time: Saturday afternoon."
    fifth = b.build_one(_prefix(dataset, seq, "1", 5))
    assert fifth == _expected_items(history, 5, 10) + " Time: Friday night."
    assert fifth.startswith(HEAD + "Bar, Midtown, Manhattan; Coffee Shop, SoHo and Tribeca, Manhattan;")
    twelfth = b.build_one(_prefix(dataset, seq, "1", 12))
    assert twelfth.startswith(_expected_items(history, 12, 10) + " Time: ")
    assert twelfth.count("; ") == 9  # L = 10 items
    assert "Request:" not in twelfth


def test_redial_known_prefixes_with_request(converted):
    config, dataset, seq, b = converted("redial")
    assert b.settings()["time_words"] is False and b.settings()["request"] is True
    history = _raw_history(config["data_path"], "redial", "1", ["movie_title"], "request")
    for t in (1, 2, 12):
        text = b.build_one(_prefix(dataset, seq, "1", t))
        request = " ".join(history[t - 1][1].split())
        assert text == _expected_items(history, t, 10) + (f" Request: {request}" if request else "")
        assert "Time:" not in text
    assert b.build_one(_prefix(dataset, seq, "1", 1)) == (
        HEAD + "Avatar (2004). Request: Hi what kind of movies do you like I like action movies and fantasy "
        "like Avatar (2004) or Star Wars")
    # prefixes whose interaction has an empty request carry no "Request:" part
    empty = [p for p, r in enumerate(b.request_texts) if not r.strip()]
    assert empty and all("Request:" not in t for t in b.build(empty[:5]))


def test_ml100k_recbole_example_known_prefix():
    config, dataset, seq, b = _load("ml-100k", None)
    assert config["timestamp_timezone"] == "America/Chicago"
    history = _raw_history(config["data_path"], "ml-100k", "196", ["movie_title", "release_year", "class"])
    # user 196's 5th rating (newest of the prefix): 881251045 = 1997-12-04 15:57 UTC = Thu 09:57 CST
    text = b.build_one(_prefix(dataset, seq, "196", 5))
    assert text == _expected_items(history, 5, 10) + " Time: Thursday morning."
    assert text.startswith(HEAD + "Boogie Nights, 1997, Drama; ")
    assert text.split(" Time: ")[0].endswith("; Kolya, 1996, Comedy.")
