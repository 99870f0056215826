"""Dataset converters (recbole_scalrec.data.prepare): hand-written samples with exact outputs,
the real shared data with the documented counts, RecBole loading, ensure_prepared."""
import gzip
import json
import logging
import os

import pytest

from recbole_scalrec.data.__main__ import main as cli_main
from recbole_scalrec.data.prepare import (
    clean_text, convert_foursquare, convert_ml100k, convert_redial, ensure_prepared, nyc_area, parse_tsmc_time,
    prepare, write_atomic_files,
)


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def write_gz(path, text):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def load_with_recbole(parent, name):
    from recbole.data import create_dataset

    from recbole_scalrec.config import Config

    config = Config(model="SASRec", dataset=name, config_dict={"data_path": str(parent), "state": "WARNING"})
    assert os.path.normpath(config["data_path"]) == os.path.normpath(os.path.join(str(parent), name))
    return config, create_dataset(config)


# ------------------------------------------------------------------------------------------
# small hand-written samples
# ------------------------------------------------------------------------------------------
TSMC_LINES = [
    ["10", "v2", "c2", "Bar", "40.714", "-73.961", "-240", "Wed Apr 04 02:30:00 +0000 2012"],
    ["2", "v3", "c3", "Food Court", "40.7600", "-73.8300", "-240", "Sat Feb 16 02:34:59 +0000 2013"],
    ["2", "v1", "c1", "Coffee Shop", "40.755", "-73.985", "-240", "Tue Apr 03 14:00:09 -0400 2012"],
    ["10", "v1", "c1", "Coffee Shop", "40.755", "-73.985", "-240", "Tue Apr 03 18:00:09 +0000 2012"],
    ["2", "v2", "c2", "Bar", "40.714", "-73.961", "-240", "Wed Apr 04 02:30:00 +0000 2012"],
]


def test_parse_tsmc_time_and_area():
    assert parse_tsmc_time("Tue Apr 03 18:00:09 +0000 2012") == 1333476009
    assert parse_tsmc_time("Tue Apr 03 14:00:09 -0400 2012") == 1333476009
    assert nyc_area(40.755, -73.985) == "Midtown, Manhattan"
    assert nyc_area(40.5795, -74.1502) == "Staten Island"
    assert clean_text(' a\tb\n "c"  ') == "a b 'c'"


def test_foursquare_raw_sample(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "dataset_TSMC2014_NYC.txt").write_text("".join("\t".join(r) + "\n" for r in TSMC_LINES))
    stats = convert_foursquare(str(src), str(tmp_path / "out"))
    assert read(tmp_path / "out" / "foursquare.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float"],
        ["2", "v1", "1333476009"],
        ["2", "v2", "1333506600"],
        ["2", "v3", "1360982099"],
        ["10", "v1", "1333476009"],
        ["10", "v2", "1333506600"],
    ]
    assert read(tmp_path / "out" / "foursquare.item") == [
        ["item_id:token", "venue_category:token", "area:token", "latitude:float", "longitude:float"],
        ["v1", "Coffee Shop", "Midtown, Manhattan", "40.755", "-73.985"],
        ["v2", "Bar", "Williamsburg and Greenpoint, Brooklyn", "40.714", "-73.961"],
        ["v3", "Food Court", "Flushing, Queens", "40.7600", "-73.8300"],
    ]
    assert (stats.users, stats.items, stats.interactions) == (1, 3, 3)  # user 10 has only 2 check-ins
    assert (stats.written_users, stats.written_items, stats.written_interactions) == (2, 3, 5)


def test_foursquare_raw_bad_line(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "dataset_TSMC2014_NYC.txt").write_text("1\tv1\tc1\tBar\n")
    with pytest.raises(ValueError, match="8 tab-separated columns"):
        convert_foursquare(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_foursquare_filtered_sample(tmp_path):
    src = tmp_path / "filtered"
    src.mkdir()
    write_gz(src / "foursquare_NYC_stan_filtered.inter.gz",
             "user_id:token\tvenue_id:token\tstan_poi_id:token\ttimestamp:float\n"
             "1\tva\t1\t1333820520\n"
             "1\t\t3\t1333800000\n"
             "2\tvb\t2\t1333900000\n"
             "1\tvb\t2\t1333820520\n")
    write_gz(src / "foursquare_NYC.item.gz",
             "venue_id:token\tvenue_category_id:token\tvenue_category_name:token\tlatitude:float\tlongitude:float\n"
             "va\tc1\tArts & Crafts Store\t40.71981038\t-74.00258103\n"
             "vb\tc2\tBridge\t40.60679958\t-74.04416981\n"
             "vc1\tc3\tHome (private)\t40.93508142\t-73.96537147\n"
             "vc2\tc3\tHome (private)\t40.93508142\t-73.96537147\n"
             "vz\tc4\tUnused\t40.7\t-74.0\n")
    write_gz(src / "stan_NYC_poi_venue_map.tsv.gz",
             "stan_poi_id\tlatitude\tlongitude\tvenue_id\tmatch\tcandidates\n"
             "1\t40.71981038\t-74.00258103\tva\texact_unique\t\n"
             "2\t40.60679958\t-74.04416981\tvb\texact_unique\t\n"
             "3\t40.93508142\t-73.96537147\t\tambiguous_same_coordinates\tvc1,vc2\n")
    stats = convert_foursquare(str(src), str(tmp_path / "out"))
    assert read(tmp_path / "out" / "foursquare.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float"],
        ["1", "vc1", "1333800000"],
        ["1", "va", "1333820520"],
        ["1", "vb", "1333820520"],  # equal times keep the source order (stable sort)
        ["2", "vb", "1333900000"],
    ]
    assert read(tmp_path / "out" / "foursquare.item") == [
        ["item_id:token", "venue_category:token", "area:token", "latitude:float", "longitude:float"],
        ["va", "Arts & Crafts Store", "SoHo and Tribeca, Manhattan", "40.71981038", "-74.00258103"],
        ["vb", "Bridge", "Bay Ridge and Sunset Park, Brooklyn", "40.60679958", "-74.04416981"],
        ["vc1", "Home (private)", "Yonkers, Westchester", "40.93508142", "-73.96537147"],
    ]
    assert (stats.users, stats.items, stats.interactions) == (1, 3, 3)


def test_foursquare_unknown_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_TSMC2014_NYC.txt"):
        convert_foursquare(str(tmp_path), str(tmp_path / "out"))


def _redial_sample(src):
    src.mkdir()
    (src / "movies_with_mentions.csv").write_text(
        "movieId,movieName,nbMentions\n"
        '100,"Star Wars  (1977)",5\n101,Alien (1979),1\n102,It (2017),1\n103,Saw (2004),1\n'
        "104,Heat (1995),2\n105,Up (2009),1\n106,Unused (2000),0\n")
    long_text = " ".join(f"w{i}" for i in range(1, 71))
    d3 = {"conversationId": "3", "initiatorWorkerId": 7, "respondentWorkerId": 8,
          "movieMentions": {"100": "Star Wars", "101": "Alien", "102": "It", "103": "Saw"},
          "initiatorQuestions": {"100": {"suggested": 0, "seen": 1, "liked": 1},
                                 "101": {"suggested": 0, "seen": 1, "liked": 0},
                                 "102": {"suggested": 1, "seen": 0, "liked": 1},
                                 "103": {"suggested": 0, "seen": 1, "liked": 0}},
          "respondentQuestions": {"101": {"suggested": 0, "seen": 1, "liked": 1}},
          "messages": [
              {"timeOffset": 5, "text": "Then try @102 or @100", "senderWorkerId": 8, "messageId": 12},
              {"timeOffset": 0, "text": "Hi! I loved @100 and\t@101", "senderWorkerId": 7, "messageId": 11},
              {"timeOffset": 9, "text": "Is @102 scary?\nI hated @103", "senderWorkerId": 7, "messageId": 13}]}
    d4 = {"conversationId": "4", "initiatorWorkerId": 5, "respondentWorkerId": 8,
          "movieMentions": {"105": "Up"}, "initiatorQuestions": {"105": {"suggested": 0, "seen": 1, "liked": 1}},
          "respondentQuestions": [],
          "messages": [{"timeOffset": 0, "text": long_text, "senderWorkerId": 5, "messageId": 30},
                       {"timeOffset": 1, "text": "I like @105", "senderWorkerId": 5, "messageId": 31}]}
    d20 = {"conversationId": "20", "initiatorWorkerId": 7, "respondentWorkerId": 9,
           "movieMentions": {"104": "Heat", "100": "Star Wars"}, "initiatorQuestions": [],
           "respondentQuestions": {"104": {"suggested": 0, "seen": 1, "liked": 1},
                                   "100": {"suggested": 0, "seen": 1, "liked": 2}},
           "messages": [{"timeOffset": 0, "text": "Something like  @104 please", "senderWorkerId": 7, "messageId": 21},
                        {"timeOffset": 3, "text": "@100", "senderWorkerId": 9, "messageId": 22}]}
    write_gz(src / "test_data.jsonl.gz", json.dumps(d20) + "\n" + json.dumps(d3) + "\n")
    write_gz(src / "train_data_partial.jsonl.gz", json.dumps(d4) + "\n" + json.dumps(d3) + "\n")  # d3 twice


def test_redial_sample(tmp_path):
    _redial_sample(tmp_path / "redial")
    stats = convert_redial(str(tmp_path / "redial"), str(tmp_path / "out"))
    first = "Hi! I loved Star Wars (1977) and Alien (1979)"
    long_request = " ".join([f"w{i}" for i in range(11, 71)] + ["I", "like", "Up", "(2009)"])
    assert read(tmp_path / "out" / "redial.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float", "request:token_seq"],
        ["5", "105", "3", long_request],
        ["7", "100", "1", first],
        ["7", "102", "2", first],  # recommended by the other side, liked by the seeker
        ["7", "104", "4", "Something like Heat (1995) please"],
    ]
    assert len(long_request.split()) == 64
    assert read(tmp_path / "out" / "redial.item") == [
        ["item_id:token", "movie_title:token_seq"],
        ["100", "Star Wars (1977)"], ["102", "It (2017)"], ["104", "Heat (1995)"], ["105", "Up (2009)"],
    ]
    assert (stats.users, stats.items, stats.interactions) == (1, 3, 3)


ML_ITEM = (
    "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "30|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "20|Caf\xe9 au lait (1993)|01-Jan-1993||http://y|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0|0\n"
)


def _ml_sample(src):
    src.mkdir(parents=True)
    write_gz(src / "u.data.gz", "2\t10\t4\t900\n1\t20\t3\t800\n1\t10\t5\t700\n10\t30\t1\t100\n2\t20\t2\t900\n"
                                "1\t30\t4\t950\n")
    (src / "u.item").write_bytes(ML_ITEM.encode("latin-1"))


def test_ml100k_sample(tmp_path):
    _ml_sample(tmp_path / "ml")
    stats = convert_ml100k(str(tmp_path / "ml"), str(tmp_path / "out"))
    assert read(tmp_path / "out" / "ml-100k.inter") == [
        ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
        ["1", "10", "5", "700"], ["1", "20", "3", "800"], ["1", "30", "4", "950"],
        ["2", "10", "4", "900"], ["2", "20", "2", "900"],
        ["10", "30", "1", "100"],
    ]
    assert read(tmp_path / "out" / "ml-100k.item") == [
        ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"],
        ["10", "Toy Story (1995)", "1995", "Animation Children's Comedy"],
        ["20", "Café au lait (1993)", "1993", "Comedy Sci-Fi"],
        ["30", "unknown", "", "unknown"],
    ]
    assert (stats.users, stats.items, stats.interactions) == (1, 3, 3)


def test_cli_prints_counts(tmp_path, capsys):
    _ml_sample(tmp_path / "ml")
    assert cli_main(["prepare", "ml-100k", "--source", str(tmp_path / "ml"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "users: 1\nitems: 3\ninteractions: 3\n" in out and "converter filter: none" in out
    assert cli_main(["prepare", "ml-100k", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1


def test_write_is_atomic(tmp_path):
    def broken():
        yield ("a", "b")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic_files(str(tmp_path), "x", ["item_id:token"], [("1",)], ["item_id:token", "t:token"], broken())
    assert os.listdir(tmp_path) == []


def test_samples_load_in_recbole(tmp_path):
    _redial_sample(tmp_path / "src")
    prepare("redial", str(tmp_path / "src"), str(tmp_path / "data" / "redial"))
    config, data = load_with_recbole(tmp_path / "data", "redial")
    assert (data.user_num - 1, data.item_num - 1, data.inter_num) == (1, 3, 3)
    from recbole_scalrec.data.item_text import load_item_texts

    texts = load_item_texts(config, data)
    assert sorted(texts[1:]) == ["Heat (1995)", "It (2017)", "Star Wars (1977)"]


# ------------------------------------------------------------------------------------------
# ensure_prepared
# ------------------------------------------------------------------------------------------
def test_ensure_prepared_existing_is_noop(tmp_path, monkeypatch, caplog):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.inter").write_text("user_id:token\titem_id:token\n")
    (tmp_path / "ml-100k").mkdir()  # a dataset the converters know, already prepared by the user
    (tmp_path / "ml-100k" / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    monkeypatch.setenv("SCALREC_SHARED_DATA", str(tmp_path / "no_shared"))  # converting would fail
    with caplog.at_level(logging.INFO, logger="recbole_scalrec.data.prepare"):
        ensure_prepared("mine", str(tmp_path))  # no converter needed
        ensure_prepared("ml-100k", str(tmp_path))
    assert "preparing" not in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["mine", "ml-100k"]
    assert os.listdir(tmp_path / "ml-100k") == ["ml-100k.inter"]
    assert (tmp_path / "ml-100k" / "ml-100k.inter").read_text() == "user_id:token\titem_id:token\n1\t2\n"


def test_ensure_prepared_unknown_dataset(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ensure_prepared("mystery", str(tmp_path))
    msg = str(err.value)
    assert "python -m recbole_scalrec.data prepare" in msg and "foursquare-nyc-merged" in msg
    assert "nothing here downloads" in msg


def test_ensure_prepared_missing_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALREC_SHARED_DATA", str(tmp_path / "no_shared"))
    with pytest.raises(FileNotFoundError) as err:
        ensure_prepared("redial", str(tmp_path / "data"))
    msg = str(err.value)
    out = os.path.join(str(tmp_path / "data"), "redial")
    assert f"python -m recbole_scalrec.data prepare redial --source <raw redial folder> --out {out}" in msg
    assert "foursquare-nyc-merged" in msg and "nothing here downloads" in msg
    assert not (tmp_path / "data").exists()


def test_ensure_prepared_converts_from_shared(tmp_path, monkeypatch, caplog):
    _ml_sample(tmp_path / "shared" / "ml-100k")
    monkeypatch.setenv("SCALREC_SHARED_DATA", str(tmp_path / "shared"))
    with caplog.at_level(logging.INFO, logger="recbole_scalrec.data.prepare"):
        ensure_prepared("ml-100k", str(tmp_path / "data"))
    assert (tmp_path / "data" / "ml-100k" / "ml-100k.inter").is_file()
    assert (tmp_path / "data" / "ml-100k" / "ml-100k.item").is_file()
    assert "preparing ml-100k" in caplog.text


# ------------------------------------------------------------------------------------------
# the real shared data (skipped without it)
# ------------------------------------------------------------------------------------------
REAL = {  # name: (shared folder, users, items, interactions) after RecBole's user filter
    "foursquare": ("foursquare_nyc", 1083, 5135, 147938),
    "redial": ("redial", 433, 3467, 17096),
    "ml-100k": ("ml-100k", 943, 1682, 100000),
}


@pytest.fixture(scope="module")
def real_converted(shared_datasets, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    stats = {}
    for name, (folder, *_rest) in REAL.items():
        if (shared_datasets / folder).is_dir():
            stats[name] = prepare(name, str(shared_datasets / folder), str(root / name))
    return root, stats


@pytest.mark.parametrize("name", list(REAL))
def test_real_counts_and_recbole_load(real_converted, name):
    root, stats = real_converted
    if name not in stats:
        pytest.skip(f"no shared {REAL[name][0]}")
    expected = REAL[name][1:]
    assert (stats[name].users, stats[name].items, stats[name].interactions) == expected
    config, data = load_with_recbole(root, name)
    assert (data.user_num - 1, data.item_num - 1, data.inter_num) == expected


def test_real_details(real_converted):
    root, stats = real_converted
    if "foursquare" in stats:
        items = {r[0] for r in read(root / "foursquare" / "foursquare.item")[1:]}
        assert "4e6e3d8f18380b4aac553e9f" in items and "4e6e3ea2c65b18875fb4e28d" not in items  # ambiguous POI 4237
        assert stats["foursquare"].written_interactions == 147938
    if "redial" in stats:
        assert (stats["redial"].written_users, stats["redial"].written_items,
                stats["redial"].written_interactions) == (466, 3472, 17150)
        rows = read(root / "redial" / "redial.inter")[1:]
        assert max(len(r[3].split()) for r in rows) <= 64 and not any("@" in r[3] for r in rows if r[3][:1] == "@")
        assert sorted(int(r[2]) for r in rows) == list(range(1, len(rows) + 1))
    if "ml-100k" in stats:
        item = read(root / "ml-100k" / "ml-100k.item")
        assert item[1] == ["1", "Toy Story (1995)", "1995", "Animation Children's Comedy"]
