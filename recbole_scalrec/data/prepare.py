"""Converters from the raw datasets to RecBole atomic files (``.inter`` / ``.item``).

``python -m recbole_scalrec.data prepare <name> --source <dir> --out <dir>`` writes
``<out>/<name>.inter`` and ``<out>/<name>.item`` (tab-separated, RecBole ``field:type`` header)
and prints users / items / interactions after the filter RecBole applies with our defaults
(``user_inter_num_interval: "[3,inf)"``). The converters themselves drop no user and no item.

Contracts (read by other code of the plug-in):

* ``.inter``: ``user_id:token  item_id:token  timestamp:float`` (+ ``rating:float`` for ml-100k,
  + ``request:token_seq`` for redial), rows sorted by user, then time (stable).
* ``.item``: ``item_id:token`` + RAW text columns (tabs, newlines and ``"`` are replaced, see
  :func:`clean_text`). Only items that occur in the ``.inter`` file are listed.

See ``docs/datasets.md`` for the rules and the measured counts.
"""
from __future__ import annotations

import calendar
import csv
import glob
import gzip
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

MIN_USER_INTER = 3  # RecBole filter of our defaults: user_inter_num_interval "[3,inf)"
REQUEST_MAX_WORDS = 64

# dataset name -> folder under shared_datasets_dir()
SHARED_SOURCES = {"foursquare": "foursquare_nyc", "redial": "redial", "ml-100k": "ml-100k"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Raw text made safe for one tab-separated field that RecBole's csv reader can parse:
    whitespace runs (tabs, newlines included) become one space, ``"`` becomes ``'`` (RecBole
    reads with the default csv quoting, so a field starting with ``"`` would swallow tabs)."""
    return _WS.sub(" ", str(text).replace('"', "'")).strip()


def _user_key(user: str):
    return (0, int(user), "") if user.isdigit() else (1, 0, user)


@dataclass
class Stats:
    """Counts of a converted dataset: as written, and after RecBole's user filter."""

    name: str
    users: int
    items: int
    interactions: int
    written_users: int
    written_items: int
    written_interactions: int

    def report(self) -> str:
        return (
            f"{self.name}: users / items / interactions = {self.users:,} / {self.items:,} / {self.interactions:,} "
            f"(after RecBole's filter user_inter_num_interval [{MIN_USER_INTER},inf); "
            f"written, unfiltered: {self.written_users:,} / {self.written_items:,} / {self.written_interactions:,})"
        )


def compute_stats(name: str, rows: Sequence[Sequence], min_user_inter: int = MIN_USER_INTER) -> Stats:
    """``rows``: (user, item, ...) tuples."""
    per_user: dict = {}
    for r in rows:
        per_user[r[0]] = per_user.get(r[0], 0) + 1
    kept = [r for r in rows if per_user[r[0]] >= min_user_inter]
    return Stats(
        name=name,
        users=sum(1 for c in per_user.values() if c >= min_user_inter),
        items=len({r[1] for r in kept}),
        interactions=len(kept),
        written_users=len(per_user),
        written_items=len({r[1] for r in rows}),
        written_interactions=len(rows),
    )


def _fmt(value) -> str:
    return str(value)


def write_atomic_files(out: str, name: str, inter_header: Sequence[str], inter_rows: Iterable[Sequence],
                       item_header: Sequence[str], item_rows: Iterable[Sequence]) -> None:
    """Write ``<out>/<name>.item`` and ``<out>/<name>.inter`` through temp files + ``os.replace``
    (the ``.inter`` last: its presence means the dataset is complete)."""
    os.makedirs(out, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    temps = []
    try:
        for ext, header, rows in (("item", item_header, item_rows), ("inter", inter_header, inter_rows)):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.{ext}.", suffix=".tmp", dir=out)
            temps.append((tmp, os.path.join(out, f"{name}.{ext}")))
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write("\t".join(header) + "\n")
                for row in rows:
                    f.write("\t".join(_fmt(v) for v in row) + "\n")
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _find(source: str, *names: str) -> str | None:
    for n in names:
        p = os.path.join(source, n)
        if os.path.isfile(p):
            return p
    return None


# --------------------------------------------------------------------------------------------
# Foursquare NYC
# --------------------------------------------------------------------------------------------
# Coarse place names for the area column: (name, latitude, longitude) of hand-placed centroids;
# a venue gets the nearest one (equirectangular distance). Approximate, for human-readable text.
NYC_AREAS: list[tuple[str, float, float]] = [
    ("Financial District, Manhattan", 40.7075, -74.0113),
    ("SoHo and Tribeca, Manhattan", 40.7220, -74.0040),
    ("Greenwich Village, Manhattan", 40.7336, -74.0027),
    ("Lower East Side, Manhattan", 40.7180, -73.9870),
    ("East Village, Manhattan", 40.7265, -73.9815),
    ("Chelsea, Manhattan", 40.7465, -74.0014),
    ("Gramercy and Murray Hill, Manhattan", 40.7420, -73.9800),
    ("Midtown, Manhattan", 40.7549, -73.9840),
    ("Upper West Side, Manhattan", 40.7870, -73.9754),
    ("Upper East Side, Manhattan", 40.7736, -73.9566),
    ("Harlem, Manhattan", 40.8116, -73.9465),
    ("Washington Heights, Manhattan", 40.8500, -73.9350),
    ("Downtown Brooklyn", 40.6928, -73.9903),
    ("Williamsburg and Greenpoint, Brooklyn", 40.7150, -73.9550),
    ("Park Slope, Brooklyn", 40.6710, -73.9814),
    ("Bedford-Stuyvesant and Bushwick, Brooklyn", 40.6900, -73.9300),
    ("Flatbush and Crown Heights, Brooklyn", 40.6500, -73.9550),
    ("Bay Ridge and Sunset Park, Brooklyn", 40.6350, -74.0200),
    ("Coney Island and Bensonhurst, Brooklyn", 40.5900, -73.9850),
    ("East New York and Canarsie, Brooklyn", 40.6550, -73.8950),
    ("Astoria and Long Island City, Queens", 40.7600, -73.9300),
    ("Jackson Heights and Elmhurst, Queens", 40.7450, -73.8800),
    ("Flushing, Queens", 40.7675, -73.8331),
    ("Forest Hills, Queens", 40.7200, -73.8450),
    ("Jamaica, Queens", 40.7027, -73.7890),
    ("JFK Airport, Queens", 40.6413, -73.7781),
    ("LaGuardia Airport, Queens", 40.7769, -73.8740),
    ("South Bronx", 40.8160, -73.9200),
    ("Fordham, Bronx", 40.8600, -73.8900),
    ("Pelham and Co-op City, Bronx", 40.8600, -73.8300),
    ("Riverdale, Bronx", 40.8900, -73.9100),
    ("Staten Island", 40.5795, -74.1502),
    ("Jersey City and Hoboken, New Jersey", 40.7282, -74.0500),
    ("Newark, New Jersey", 40.7357, -74.1724),
    ("Bergen County, New Jersey", 40.9000, -74.0500),
    ("Yonkers, Westchester", 40.9312, -73.8987),
    ("Nassau County, Long Island", 40.7300, -73.7000),
]


def nyc_area(lat: float, lon: float) -> str:
    """Nearest entry of :data:`NYC_AREAS`."""
    scale = math.cos(math.radians(40.73))
    best = min(NYC_AREAS, key=lambda a: (a[1] - lat) ** 2 + ((a[2] - lon) * scale) ** 2)
    return best[0]


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def parse_tsmc_time(text: str) -> int:
    """``Tue Apr 03 18:00:09 +0000 2012`` -> UTC unix seconds (locale-independent)."""
    _, mon, day, hms, tz, year = text.split()
    h, m, s = (int(x) for x in hms.split(":"))
    local = calendar.timegm((int(year), _MONTHS[mon], int(day), h, m, s, 0, 0, 0))
    sign = -1 if tz[0] == "-" else 1
    offset = sign * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)
    return local - offset


FOURSQUARE_INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
FOURSQUARE_ITEM_HEADER = ["item_id:token", "venue_category:token", "area:token", "latitude:float", "longitude:float"]


def _foursquare_write(out: str, name: str, rows: list, venues: dict) -> Stats:
    rows.sort(key=lambda r: (_user_key(r[0]), r[2]))
    used = sorted({r[1] for r in rows})
    item_rows = []
    for v in used:
        category, lat, lon = venues[v]
        item_rows.append((v, clean_text(category), nyc_area(float(lat), float(lon)), lat, lon))
    write_atomic_files(out, name, FOURSQUARE_INTER_HEADER, rows, FOURSQUARE_ITEM_HEADER, item_rows)
    return compute_stats(name, rows)


def convert_foursquare_raw(path: str, out: str, name: str = "foursquare") -> Stats:
    """Raw TSMC2014 ``dataset_TSMC2014_NYC.txt`` (8 tab-separated columns, no header).
    Every check-in is kept; a venue's category and coordinates are those of its first row."""
    rows, venues = [], {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(raw).rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 8:
                raise ValueError(f"{path}:{n}: expected 8 tab-separated columns, got {len(cols)}")
            user, venue, _cat_id, category, lat, lon, _tz_offset, utc = cols
            if n == 1 and not user.strip().isdigit():  # tolerate a header line
                continue
            venues.setdefault(venue, (category, lat, lon))
            rows.append((user.strip(), venue, parse_tsmc_time(utc)))
    return _foursquare_write(out, name, rows, venues)


def convert_foursquare_filtered(source: str, out: str, name: str = "foursquare") -> Stats:
    """The STAN-filtered copy (``foursquare_NYC_stan_filtered.inter.gz`` + ``foursquare_NYC.item.gz``
    + ``stan_NYC_poi_venue_map.tsv.gz``). Rows with an empty (ambiguous) venue_id get the FIRST
    candidate venue of the map (the lexicographically smaller id; both candidates share the
    coordinates, and no other POI uses either), so all 5,135 POIs stay distinct items."""
    inter_path = _find(source, "foursquare_NYC_stan_filtered.inter.gz", "foursquare_NYC_stan_filtered.inter")
    item_path = _find(source, "foursquare_NYC.item.gz", "foursquare_NYC.item")
    map_path = _find(source, "stan_NYC_poi_venue_map.tsv.gz", "stan_NYC_poi_venue_map.tsv")
    venues = {}
    with _open_text(item_path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        iv, ic, ila, ilo = (header.index(k) for k in ("venue_id", "venue_category_name", "latitude", "longitude"))
        for r in reader:
            venues[r[iv]] = (r[ic], r[ila], r[ilo])
    ambiguous = {}
    if map_path is not None:
        with _open_text(map_path) as f:
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if not r["venue_id"] and r.get("candidates"):
                    ambiguous[r["stan_poi_id"]] = r["candidates"].split(",")[0]
    rows = []
    with _open_text(inter_path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        iu, iv, ip, it = (header.index(k) for k in ("user_id", "venue_id", "stan_poi_id", "timestamp"))
        for r in reader:
            venue = r[iv] or ambiguous.get(r[ip])
            if not venue:
                raise ValueError(f"{inter_path}: POI {r[ip]} has no venue id and no candidate in {map_path}")
            rows.append((r[iu], venue, int(float(r[it]))))
    return _foursquare_write(out, name, rows, venues)


def convert_foursquare(source: str, out: str, name: str = "foursquare") -> Stats:
    """Detect the format held by ``source`` (raw TSMC2014 file or the filtered copy) and convert."""
    if os.path.isfile(source):
        return convert_foursquare_raw(source, out, name)
    raw = sorted(glob.glob(os.path.join(source, "dataset_TSMC2014_*.txt")))
    raw = [p for p in raw if p.endswith("_NYC.txt")] or raw
    if raw:
        return convert_foursquare_raw(raw[0], out, name)
    if _find(source, "foursquare_NYC_stan_filtered.inter.gz", "foursquare_NYC_stan_filtered.inter") and \
            _find(source, "foursquare_NYC.item.gz", "foursquare_NYC.item"):
        return convert_foursquare_filtered(source, out, name)
    raise FileNotFoundError(
        f"{source} holds neither dataset_TSMC2014_NYC.txt (raw TSMC2014) nor "
        f"foursquare_NYC_stan_filtered.inter.gz + foursquare_NYC.item.gz (filtered copy)."
    )


# --------------------------------------------------------------------------------------------
# ReDial
# --------------------------------------------------------------------------------------------
_MENTION = re.compile(r"@(\d+)")
REDIAL_INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float", "request:token_seq"]
REDIAL_ITEM_HEADER = ["item_id:token", "movie_title:token_seq"]


def _redial_liked(movie: str, initiator_q, respondent_q) -> bool:
    """The seeker liked the movie: ``liked == 1`` in the seeker's own form (initiatorQuestions),
    or, when the seeker's form lacks the movie, in the recommender's form about the seeker."""
    for q in (initiator_q, respondent_q):
        if isinstance(q, dict) and movie in q:
            return q[movie].get("liked") == 1
    return False


def convert_redial(source: str, out: str, name: str = "redial") -> Stats:
    """ReDial jsonl(.gz) dialogues (every ``*.jsonl``/``*.jsonl.gz`` in ``source``, duplicates by
    conversationId dropped) + ``movies_with_mentions.csv``.

    A user is the seeker (initiatorWorkerId). An interaction is a movie mentioned in the
    dialogue (by either side) that the seeker liked (see :func:`_redial_liked`), once per
    dialogue, at its first mention. Order: conversationId (numeric), messageId, position in the
    message; ``timestamp`` is that global order index (1, 2, ...), not real time. ``request`` is
    the seeker's own utterances in the dialogue up to and including the mention's message,
    ``@id`` replaced by the title, whitespace-normalised, last 64 words.
    """
    movies_csv = _find(source, "movies_with_mentions.csv")
    if movies_csv is None:
        raise FileNotFoundError(f"{source} has no movies_with_mentions.csv")
    titles = {}
    with open(movies_csv, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            titles[r["movieId"].strip()] = clean_text(r["movieName"])
    files = sorted(glob.glob(os.path.join(source, "*.jsonl")) + glob.glob(os.path.join(source, "*.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"{source} has no *.jsonl / *.jsonl.gz dialogue files")
    dialogues = {}
    for path in files:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    dialogues.setdefault(str(d["conversationId"]), d)
    rows, item_titles = [], {}
    order = 0
    for cid in sorted(dialogues, key=lambda c: (int(c) if c.isdigit() else math.inf, c)):
        d = dialogues[cid]
        seeker = str(d["initiatorWorkerId"])
        mentions = d.get("movieMentions") or {}
        if not isinstance(mentions, dict):
            mentions = {}

        def title(mid: str) -> str:
            return titles.get(mid) or clean_text(mentions.get(mid) or "") or f"@{mid}"

        seeker_words: list[str] = []
        seen = set()
        for msg in sorted(d["messages"], key=lambda m: m["messageId"]):
            text = msg.get("text") or ""
            if str(msg["senderWorkerId"]) == seeker:
                seeker_words.extend(clean_text(_MENTION.sub(lambda m: title(m.group(1)), text)).split())
            for mid in _MENTION.findall(text):
                if mid in seen:
                    continue
                seen.add(mid)  # the first mention decides; the liked flag is per dialogue
                if not _redial_liked(mid, d.get("initiatorQuestions"), d.get("respondentQuestions")):
                    continue
                order += 1
                rows.append((seeker, mid, order, " ".join(seeker_words[-REQUEST_MAX_WORDS:])))
                item_titles[mid] = title(mid)
    rows.sort(key=lambda r: (_user_key(r[0]), r[2]))
    item_rows = [(m, item_titles[m]) for m in sorted(item_titles, key=_user_key)]
    write_atomic_files(out, name, REDIAL_INTER_HEADER, rows, REDIAL_ITEM_HEADER, item_rows)
    return compute_stats(name, rows)


# --------------------------------------------------------------------------------------------
# MovieLens 100K
# --------------------------------------------------------------------------------------------
ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]
ML_INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ML_ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]


def convert_ml100k(source: str, out: str, name: str = "ml-100k") -> Stats:
    """Official ``u.data`` (or ``u.data.gz``) + ``u.item`` (latin-1) [+ ``u.genre``]. Every rating is
    kept (``rating:float`` too). ``movie_title`` keeps the year as in u.item, ``release_year`` is
    the year of the release date (empty when missing), ``class`` the genre names of the flags."""
    data_path = _find(source, "u.data", "u.data.gz")
    item_path = _find(source, "u.item")
    if data_path is None or item_path is None:
        raise FileNotFoundError(f"{source} needs u.data (or u.data.gz) and u.item")
    genres = ML_GENRES
    genre_path = _find(source, "u.genre")
    if genre_path is not None:
        with open(genre_path, encoding="latin-1") as f:
            pairs = [ln.strip().split("|") for ln in f if ln.strip()]
        genres = [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))]
    rows = []
    opener = gzip.open(data_path, "rt") if data_path.endswith(".gz") else open(data_path)
    with opener as f:
        for line in f:
            if line.strip():
                u, i, r, t = line.split()
                rows.append((u, i, r, int(t)))
    rows.sort(key=lambda r: (_user_key(r[0]), r[3]))
    item_rows = []
    with open(item_path, encoding="latin-1") as f:
        for line in f:
            if not line.strip():
                continue
            cols = line.rstrip("\r\n").split("|")
            flags = cols[5:5 + len(genres)]
            date = cols[2].strip()
            year = date[-4:] if re.fullmatch(r".*\d{4}", date) else ""
            item_rows.append((cols[0], clean_text(cols[1]), year,
                              " ".join(g for g, v in zip(genres, flags) if v.strip() == "1")))
    item_rows.sort(key=lambda r: _user_key(r[0]))
    write_atomic_files(out, name, ML_INTER_HEADER, rows, ML_ITEM_HEADER, item_rows)
    return compute_stats(name, rows)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
CONVERTERS: dict[str, Callable[[str, str, str], Stats]] = {
    "foursquare": convert_foursquare,
    "redial": convert_redial,
    "ml-100k": convert_ml100k,
}


def prepare(name: str, source: str, out: str) -> Stats:
    """Convert dataset ``name`` from ``source`` into the dataset folder ``out``."""
    if name not in CONVERTERS:
        raise ValueError(f"No converter for {name!r}; known: {', '.join(CONVERTERS)}.")
    if not os.path.exists(source):
        raise FileNotFoundError(f"Source {source} does not exist.")
    return CONVERTERS[name](source, out, name)


def prepare_command(dataset: str, source: str, out: str) -> str:
    return f"python -m recbole_scalrec.data prepare {dataset} --source {source} --out {out}"


def ensure_prepared(dataset: str, data_path: str) -> None:
    """Make sure RecBole finds ``dataset`` under ``data_path`` (RecBole's ``data_path``, the parent
    of the dataset folder): nothing to do when ``<data_path>/<dataset>/<dataset>.inter`` (or
    ``<data_path>/<dataset>.inter``) exists; else convert it from the shared raw copy into
    ``<data_path>/<dataset>/``; else raise :class:`FileNotFoundError` saying what to run."""
    from recbole_scalrec.utils import shared_datasets_dir

    folder = os.path.join(data_path, dataset)
    if os.path.isfile(os.path.join(folder, f"{dataset}.inter")) or \
            os.path.isfile(os.path.join(data_path, f"{dataset}.inter")):
        return
    target = os.path.join(folder, f"{dataset}.inter")
    note = ("RecBole's own download list has e.g. foursquare-nyc-merged (its own format and filters), "
            "but nothing here downloads: prepare the dataset from a local raw copy.")
    if dataset in SHARED_SOURCES:
        source = shared_datasets_dir() / SHARED_SOURCES[dataset]
        if source.is_dir():
            logger.info(f"{target} is missing: preparing {dataset} from {source}")
            stats = prepare(dataset, str(source), folder)
            logger.info(f"prepared {dataset} in {folder}: {stats.report()}")
            return
        raise FileNotFoundError(
            f"Dataset {dataset!r} is not prepared: {target} does not exist, and its raw source {source} "
            f"is missing (set $SCALREC_SHARED_DATA to the shared datasets folder). Run: "
            f"{prepare_command(dataset, f'<raw {SHARED_SOURCES[dataset]} folder>', folder)}. {note}"
        )
    raise FileNotFoundError(
        f"Dataset {dataset!r} is not prepared: {target} does not exist, and there is no converter for it "
        f"(known: {', '.join(CONVERTERS)}; run {prepare_command('<name>', '<raw folder>', os.path.join(data_path, '<name>'))}). "
        f"Otherwise write {dataset}.inter (user_id:token, item_id:token, timestamp:float) and {dataset}.item "
        f"into {folder} yourself. {note}"
    )
