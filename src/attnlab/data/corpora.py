"""Built-in parallel corpora generated from real multilingual text libraries (offline, seeded).

- numbers: lists of numbers written out in words by ``num2words``, one language -> another.
  English -> Spanish is nearly monotonic ("forty - two" -> "cuarenta y dos"); English ->
  German reorders inside every number ("eighty - seven" -> "siebenundachtzig": seven first),
  which is what makes alignments worth looking at (use a character-level target for German,
  whose numbers below a million are single words).
- dates: a date as the CLDR data in ``babel`` writes it in many locales and formats
  ("2. Januar 2003", "Jan 2, 2003", "2003年1月2日") -> ISO 8601 ("2003-01-02").

The same seed gives the same pairs on every machine (Python's ``random.Random``).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from functools import lru_cache

from attnlab.data.tokenize import normalize
from attnlab.data.tsv import Pair

# Locales whose medium/long/full date formats are unambiguous (no 2-digit years; a numeric
# order that is fixed within the locale). Short formats ("1/2/03") are left out on purpose.
DATE_LOCALES: tuple[str, ...] = (
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "sv_SE", "pl_PL",
    "ru_RU", "ja_JP", "zh_CN", "ko_KR", "tr_TR", "fi_FI", "cs_CZ", "da_DK", "hu_HU", "el_GR",
)
DATE_FORMATS: tuple[str, ...] = ("medium", "long", "full")


@lru_cache(maxsize=1 << 18)
def _words(value: int, lang: str) -> str:
    from num2words import num2words

    return normalize(num2words(value, lang=lang))


def check_language(name: str, lang: str) -> None:
    try:
        _words(1, lang)
    except (NotImplementedError, KeyError, AttributeError) as e:
        raise ValueError(f"{name}: expected a language code num2words supports "
                         f"(en, es, de, fr, ...), got {lang!r}") from e


def number_pairs(n: int, *, seed: int, src_lang: str = "en", tgt_lang: str = "es",
                 min_items: int = 1, max_items: int = 3, max_value: int = 999_999,
                 separator: str = ";") -> list[Pair]:
    """``n`` pairs, each a list of 1..``max_items`` numbers joined by ``separator``.

    Values are log-uniform in [0, max_value], so "seven" and "four hundred and two thousand
    ..." are both common. The source length grows with the number of items.
    """
    if not 1 <= min_items <= max_items:
        raise ValueError(f"min_items/max_items: expected 1 <= min <= max, got {min_items}, "
                         f"{max_items}")
    if max_value < 0:
        raise ValueError(f"max_value: expected >= 0, got {max_value}")
    check_language("src_lang", src_lang)
    check_language("tgt_lang", tgt_lang)
    rng = random.Random(seed)
    top = math.log10(max_value + 1)
    out = []
    for _ in range(n):
        k = rng.randint(min_items, max_items)
        values = [min(max_value, int(10 ** rng.uniform(0.0, top)) - 1) for _ in range(k)]
        src = f"{separator} ".join(_words(v, src_lang) for v in values)
        tgt = f"{separator} ".join(_words(v, tgt_lang) for v in values)
        out.append(Pair(src=src, tgt=tgt))
    return out


def date_pairs(n: int, *, seed: int, locales: Sequence[str] = DATE_LOCALES,
               formats: Sequence[str] = DATE_FORMATS, start_year: int = 1900,
               end_year: int = 2099) -> list[Pair]:
    """``n`` (localised date -> ISO date) pairs, dates uniform in [start_year, end_year]."""
    from babel import Locale, UnknownLocaleError
    from babel.dates import format_date

    for loc in locales:
        try:
            Locale.parse(loc)
        except (UnknownLocaleError, ValueError) as e:
            raise ValueError(f"locales: expected CLDR locale names like 'de_DE', got {loc!r}") from e
    bad = [f for f in formats if f not in ("short", "medium", "long", "full")]
    if bad:
        raise ValueError(f"formats: expected short/medium/long/full, got {bad}")
    if start_year > end_year:
        raise ValueError(f"start_year: expected <= end_year ({end_year}), got {start_year}")
    rng = random.Random(seed)
    first = dt.date(start_year, 1, 1).toordinal()
    last = dt.date(end_year, 12, 31).toordinal()
    out = []
    for _ in range(n):
        day = dt.date.fromordinal(rng.randint(first, last))
        text = format_date(day, rng.choice(list(formats)), locale=rng.choice(list(locales)))
        out.append(Pair(src=normalize(text), tgt=day.isoformat()))
    return out
