"""Needle keys and values: distinct by construction, reproducible from a seeded `random.Random`.

LWM's needle script drew cities from a 100-entry list that holds each of 26 names two to four times,
so a multi-needle trial could insert "Chicago" twice with two numbers and ask for one of them. Here
every pool is checked for duplicates at import time and `draw_keys` samples without replacement, so
the keys of one case are always distinct (values too).

Key kinds: "city" (LWM), "word" (RULER-style adjective-noun pairs), "uuid", "var" (five capital
letters, RULER's variable names). Value kinds: "number" (seven digits, LWM), "uuid", "word".

Example:
    >>> rng = random.Random(0)
    >>> draw_keys("city", 3, rng)
    ['Reykjavik', 'Seoul', 'Baghdad']
    >>> draw_values("number", 2, rng)
    ['5343902', '9577766']
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterable

CITIES = (
    "Abuja", "Accra", "Addis Ababa", "Almaty", "Amman", "Amsterdam", "Antananarivo", "Asuncion", "Athens",
    "Auckland", "Baghdad", "Baku", "Bangalore", "Bangkok", "Barcelona", "Beirut", "Belgrade", "Berlin",
    "Bogota", "Bratislava", "Brisbane", "Brussels", "Bucharest", "Budapest", "Buenos Aires", "Cairo",
    "Cape Town", "Caracas", "Casablanca", "Chennai", "Chicago", "Colombo", "Copenhagen", "Dakar",
    "Damascus", "Delhi", "Dhaka", "Doha", "Dubai", "Dublin", "Edinburgh", "Florence", "Geneva", "Hanoi",
    "Havana", "Helsinki", "Ho Chi Minh City", "Hong Kong", "Istanbul", "Jakarta", "Johannesburg",
    "Kampala", "Karachi", "Kathmandu", "Khartoum", "Kigali", "Kingston", "Kuala Lumpur", "Kyiv", "Kyoto",
    "La Paz", "Lagos", "Lima", "Lisbon", "Ljubljana", "London", "Los Angeles", "Luanda", "Lusaka", "Lyon",
    "Madrid", "Manila", "Maputo", "Marseille", "Melbourne", "Mexico City", "Milan", "Minsk", "Montevideo",
    "Montreal", "Moscow", "Mumbai", "Munich", "Muscat", "Nairobi", "Naples", "Nicosia", "Osaka", "Oslo",
    "Ottawa", "Panama City", "Paris", "Perth", "Port Louis", "Porto", "Prague", "Quito", "Rabat",
    "Reykjavik", "Riga", "Rio de Janeiro", "Riyadh", "Rome", "Santiago", "Sao Paulo", "Sarajevo", "Seattle",
    "Seoul", "Shanghai", "Singapore", "Sofia", "Stockholm", "Sydney", "Taipei", "Tallinn", "Tashkent",
    "Tbilisi", "Tehran", "Thimphu", "Tokyo", "Toronto", "Tunis", "Valencia", "Vancouver", "Victoria",
    "Vienna", "Vilnius", "Warsaw", "Wellington", "Yangon", "Yerevan", "Zagreb", "Zurich",
)  # fmt: skip

ADJECTIVES = (
    "amber", "ancient", "bitter", "bold", "brave", "brisk", "calm", "clever", "crimson", "curious",
    "dusty", "eager", "early", "faint", "fancy", "fierce", "frozen", "gentle", "giant", "glossy",
    "golden", "grumpy", "hollow", "humble", "icy", "jolly", "keen", "lively", "lonely", "loud", "lucky",
    "mellow", "misty", "modest", "noble", "odd", "pale", "plain", "polite", "proud", "quick", "quiet",
    "rapid", "rare", "rusty", "sandy", "shiny", "silent", "silver", "sleepy", "smooth", "snowy", "sour",
    "steady", "stormy", "sunny", "swift", "tame", "tidy", "tiny", "vivid", "wary", "wild", "witty",
)  # fmt: skip

NOUNS = (
    "anchor", "apple", "arrow", "badger", "banner", "barrel", "basket", "beacon", "bell", "blanket",
    "bottle", "bridge", "bucket", "cabin", "camera", "candle", "canyon", "carpet", "castle", "cello",
    "chisel", "cloud", "comet", "compass", "copper", "cradle", "desert", "dragon", "engine", "falcon",
    "feather", "fiddle", "forest", "fountain", "garden", "glacier", "hammer", "harbor", "helmet",
    "island", "jacket", "kettle", "ladder", "lantern", "lemon", "magnet", "marble", "meadow", "mirror",
    "monkey", "needle", "oyster", "paddle", "pebble", "pepper", "piano", "pillow", "planet", "pocket",
    "puzzle", "quiver", "rabbit", "ribbon", "saddle", "signal", "spider", "stable", "tunnel", "violin",
    "wagon", "walnut", "window", "wizard", "zipper",
)  # fmt: skip

KEY_KINDS = ("city", "word", "uuid", "var")
VALUE_KINDS = ("number", "uuid", "word")


def _check_unique(name: str, pool: Iterable[str]) -> None:
    seen: set[str] = set()
    dupes = sorted({p for p in pool if p in seen or seen.add(p)})
    if dupes:
        raise AssertionError(f"{name} holds duplicates: {dupes}")


for _name, _pool in (("CITIES", CITIES), ("ADJECTIVES", ADJECTIVES), ("NOUNS", NOUNS)):
    _check_unique(_name, _pool)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _word(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _var(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _distinct(make, n: int, rng: random.Random, exclude: Iterable[str], what: str) -> list[str]:
    taken = set(exclude)
    out: list[str] = []
    for _ in range(50 * n + 100):  # generous: the pools are far larger than any case needs
        if len(out) == n:
            return out
        v = make(rng)
        if v not in taken:
            taken.add(v)
            out.append(v)
    raise ValueError(f"cannot draw {n} distinct {what}s (got {len(out)})")


def draw_keys(kind: str, n: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """`n` distinct keys of `kind`, none in `exclude`.

    Raises:
      ValueError: for an unknown kind, or more keys than the pool holds.
    """
    exclude = set(exclude)
    if kind == "city":
        pool = [c for c in CITIES if c not in exclude]
        if n > len(pool):
            raise ValueError(f"only {len(pool)} distinct cities are available, {n} were asked for")
        return rng.sample(pool, n)
    makers = {"word": _word, "uuid": _uuid, "var": _var}
    if kind not in makers:
        raise ValueError(f"unknown key kind {kind!r}; known: {list(KEY_KINDS)}")
    return _distinct(makers[kind], n, rng, exclude, f"{kind} key")


def draw_values(kind: str, n: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """`n` distinct values of `kind` ("number": seven digits, as LWM; "uuid"; "word").

    Raises:
      ValueError: for an unknown kind.
    """
    makers = {"number": _number, "uuid": _uuid, "word": _word}
    if kind not in makers:
        raise ValueError(f"unknown value kind {kind!r}; known: {list(VALUE_KINDS)}")
    return _distinct(makers[kind], n, rng, exclude, f"{kind} value")


def english_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b, and c' (LWM's multi-needle question joins keys this way)."""
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]
