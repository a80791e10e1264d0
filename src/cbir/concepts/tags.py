"""Clean noisy user tags (Flickr style) before they become concepts or tag vectors.

Rule-based on purpose, no NLP dependency. :func:`normalize_tag` maps one raw tag to its
canonical form or ``None`` when the tag carries no image content:

1. NFKC, lower case, trimmed; machine tags (``geo:lat=...``, ``uploaded:by=...``) dropped;
2. camera and file junk dropped: brands and models (``canon``, ``nikon d700``, ``400d``,
   ``canoneos400d``), ``iso100`` / ``iso 400``, apertures ``f2.8`` / ``f/4``, exposures
   ``1/250``, focal lengths ``50mm`` / ``18-55mm``, file names ``img_1234`` / ``dsc01234`` /
   ``x.jpg``, dates ``2008-05-01`` / ``may2008``, ordinals, and Flickr meta tags
   (``geotagged``, ``explore``, award-group tags...); a tag with no letter at all (numbers,
   years, ``1/250``) goes too. :data:`KEEP_TAGS` rescues the few real things those patterns
   catch (``f1``, ``3d``, ``a380``, ``4x4``...);
3. punctuation becomes a space (``black-and-white`` -> ``black and white``), possessive
   ``'s`` is removed, stop words at either end are stripped and a tag made only of stop words
   (and camera words) is dropped;
4. the last word is singularised by :func:`singularize` (English suffix rules with
   exception lists: ``cats -> cat``, ``boxes -> box``, ``berries -> berry``,
   ``leaves -> leaf``, while ``glass``, ``bus``, ``news``, ``paris`` stay as they are);
5. tags shorter than ``min_length`` (2) characters are dropped.

The result is a fixed point: ``normalize_tag(normalize_tag(t)) == normalize_tag(t)``.
Known trade-offs: short model-like codes (``d80``, ``e500``, ``fz50``) are treated as cameras,
so a few real names with that shape are lost unless listed in :data:`KEEP_TAGS`; plural-only
or proper nouns ending in ``s`` need an entry in :data:`INVARIANT_WORDS`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence


def _words(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text`` (keeps the word lists below readable)."""
    return frozenset(text.split())


def _pairs(text: str) -> dict[str, str]:
    """``plural:singular`` pairs separated by whitespace, as a dict."""
    return dict(pair.split(":", 1) for pair in text.split())


__all__ = [
    "CAMERA_WORDS",
    "INVARIANT_WORDS",
    "IRREGULAR_PLURALS",
    "KEEP_TAGS",
    "META_TAGS",
    "STOP_WORDS",
    "TagCleaner",
    "build_vocabulary",
    "clean_tags",
    "normalize_tag",
    "singularize",
]

#: English function words (plus a few French/Spanish/German ones common on Flickr).
STOP_WORDS: frozenset[str] = _words(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me mine more most my myself no nor not now of off on once only or other our ours ourselves
    out over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours yourself yourselves also etc via vs
    de le les du des el los las del en et y un une der die das und von im am
    """
)

#: camera makers, product lines and exposure words: meaningless as image content.
CAMERA_WORDS: frozenset[str] = _words(
    """
    canon nikon nikkor sony olympus zuiko pentax fuji fujifilm finepix panasonic lumix leica kodak
    minolta konica konicaminolta sigma tamron tokina ricoh casio hasselblad mamiya eos powershot
    coolpix cybershot dimage ixus ixy rebel digitalrebel xti xsi dslr slr dlsr iso ef efs usm afs
    vr dmc dsc mm exif jpg jpeg raw
    """
)

#: Flickr bookkeeping and award-group tags that never describe the picture.
META_TAGS: frozenset[str] = _words(
    """
    geotagged geotag geotagging geocoded geolocated gps flickr flickrmobile flickriosapp flickrandroidapp
    uploaded upload explore explored interestingness instagram instagramapp hipstamatic iphoneography
    photoshop lightroom photomatix gimp picnik project365 abigfave aplusphoto anawesomeshot
    diamondclassphotographer flickrdiamond impressedbeauty superbmasterpiece platinumphoto
    goldstaraward naturesfinest blueribbonwinner citrit excellentphotographer theperfectphotographer
    supershot photographyrocks colorphotoaward flickrsbest mywinners worldwidewandering
    """
)

#: tags that look like camera or exposure junk but name real, visible things.
KEEP_TAGS: frozenset[str] = _words(
    "f1 f15 f16 f18 f22 f35 f117 a320 a330 a340 a350 a380 b17 b29 b52 b747 3d 4x4 r2d2 c3po mp3"
)

#: irregular or ambiguous plurals: the suffix rules would get these wrong.
IRREGULAR_PLURALS: dict[str, str] = _pairs(
    """
    men:man women:woman children:child feet:foot teeth:tooth geese:goose mice:mouse lice:louse oxen:ox
    leaves:leaf knives:knife wives:wife wolves:wolf halves:half shelves:shelf loaves:loaf
    thieves:thief calves:calf elves:elf scarves:scarf hooves:hoof sheaves:sheaf selves:self lives:life
    cacti:cactus fungi:fungus criteria:criterion phenomena:phenomenon tomatoes:tomato potatoes:potato
    heroes:hero volcanoes:volcano mangoes:mango mosquitoes:mosquito echoes:echo torpedoes:torpedo
    tornadoes:tornado buffaloes:buffalo dominoes:domino avocadoes:avocado buses:bus gases:gas
    lenses:lens canvases:canvas atlases:atlas irises:iris oases:oasis crises:crisis theses:thesis
    analyses:analysis cactuses:cactus octopuses:octopus viruses:virus campuses:campus circuses:circus
    walruses:walrus platypuses:platypus bonuses:bonus geniuses:genius choruses:chorus lotuses:lotus
    hippopotamuses:hippopotamus quizzes:quiz niches:niche caches:cache headaches:headache
    avalanches:avalanche moustaches:moustache mustaches:mustache quiches:quiche cliches:cliche
    porsches:porsche movies:movie cookies:cookie zombies:zombie selfies:selfie brownies:brownie
    hippies:hippie pixies:pixie rookies:rookie veggies:veggie smoothies:smoothie hoodies:hoodie
    goalies:goalie aussies:aussie birdies:birdie menus:menu emus:emu gurus:guru tutus:tutu haikus:haiku
    gnus:gnu kiwis:kiwi taxis:taxi skis:ski bikinis:bikini martinis:martini safaris:safari yetis:yeti
    alibis:alibi wikis:wiki emojis:emoji minis:mini rabbis:rabbi saris:sari tipis:tipi okapis:okapi
    jacuzzis:jacuzzi khakis:khaki sushis:sushi biases:bias aliases:alias
    """
)

#: words ending in ``s`` that are singular (or plural-only) and must not lose it.
INVARIANT_WORDS: frozenset[str] = _words(
    """
    news series species means lens jeans pants shorts trousers clothes scissors sunglasses eyeglasses
    binoculars goggles pliers tongs tweezers outdoors indoors always sometimes perhaps towards
    afterwards upstairs downstairs nowadays whereas overseas thanks congratulations riches remains
    barracks headquarters crossroads gallows innings whereabouts measles mumps diabetes herpes rabies
    billiards checkers chess mathematics physics politics economics athletics gymnastics aerobics
    electronics ethics acoustics aesthetics genetics linguistics logistics statistics tactics
    olympics paralympics simpsons beatles
    texas christmas xmas canvas atlas vegas lasvegas kansas arkansas dallas douglas thomas nicholas
    lucas bias alias pampas bahamas andreas elias jonas tobias judas honduras caracas
    chaos cosmos kudos ethos pathos thermos carlos marcos barbados lagos naxos paros patmos mykonos
    santos argos delos
    wales athens andes pyrenees cannes nimes hermes james charles jones hughes yves hades mercedes
    losangeles angeles naples versailles marseilles brussels seychelles philippines netherlands
    maldives alps rockies smokies everglades badlands dardanelles hebrides azores
    illinois des moines adidas
    """
)

_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_CAMERA_PREFIX = (
    "canon|nikon|nikkor|olympus|pentax|fujifilm|finepix|panasonic|lumix|minolta|hasselblad|powershot"
    "|coolpix|cybershot|tamron|zuiko|leica|sonyalpha|sonydsc|eos"
)
#: whole-tag patterns (tested on the lower-cased tag before punctuation is removed).
_JUNK_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^[\w.-]+:[\w.-]*=",  # machine tags: geo:lat=..., uploaded:by=..., camera:make=...
        r"^\d{4}[-/._ ]\d{1,2}([-/._ ]\d{1,2})?$",  # 2008-05-01, 2008/05
        r"^\d{1,2}[-/._ ]\d{1,2}[-/._ ]\d{2,4}$",  # 01.05.2008
        rf"^({_MONTHS})[\s_-]?'?\d{{2,4}}$",  # may2008, march 2007, jul07
        r"^\d+(st|nd|rd|th)$",  # ordinals
        r"^\d+\s*/\s*\d+\s*(s|sec|secs)?$",  # 1/250, 1/60s
        r"^\d*[.,]?\d+\s*(sec|secs|seconds)$",  # 30sec, 0.5 sec
        r"^\d*[.,]\d+\s*s$",  # 0.5s
        r"^f\s*/?\s*\d{1,2}([.,]\d)?$",  # f2.8, f/4, f 8
        r"^\d+([.,]\d+)?\s*(-\s*\d+([.,]\d+)?\s*)?mm\w*$",  # 50mm, 18-55mm, 50mm18, 70200mm
        r"^iso\s*-?\s*\d{2,5}$",  # iso100, iso 400
        rf"^({_CAMERA_PREFIX})\w*$",  # canoneos400d, nikond80, leicam6
        r"^d\d{1,4}[a-z]?$",  # nikon d40 d80 d700 d3x
        r"^\d{1,4}d$",  # canon 5d 40d 350d 1000d
        r"^(e|k|fz|lx|tz|sx|sd|dmc|dsc|ex|ixus|ixy|dslr)\s*-?\s*\d{1,5}[a-z]{0,3}$",  # e500, fz50, sx10is
        r"^[a-z]{1,2}\d{1,4}(is|fd|hs|uz|exr)$",  # s5is, f30fd, sp550uz
        r"^(img|dsc|dscn|dscf|dsci|imgp|pict|cimg|dcp|sdc|mvi|mov|vid|pic|p|hpim|sam|pano|scan)"
        r"[\s_-]?\d{3,}\w*$",  # img_1234, dsc01234, p1010001
        r"\.(jpe?g|png|gif|tiff?|bmp|raw|cr2|nef|arw|orf|dng|heic|mov|mp4|avi)$",  # file names
    )
)
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_APOSTROPHE = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def singularize(word: str) -> str:
    """Singular of one lower-case English word by suffix rules; unknown shapes are left alone.

    Words of 3 letters or fewer, non-ASCII words, :data:`INVARIANT_WORDS` and words ending in
    ``ss``/``us``/``is`` are kept (``glass``, ``bus``, ``paris``); :data:`IRREGULAR_PLURALS`
    comes first (``leaves -> leaf``); then ``-ies -> -y``, ``-sses/-shes/-ches/-xes/-zzes``
    lose ``es`` and any other final ``s`` goes.
    """
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if (
        len(word) <= 3
        or not word.endswith("s")
        or not word.isascii()
        or not word.isalpha()
        or word in INVARIANT_WORDS
        or word.endswith(("ss", "us", "is"))
    ):
        return word
    if word.endswith("ies"):
        return word[:-1] if len(word) == 4 else word[:-3] + "y"  # ties -> tie; berries -> berry
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]
    return word[:-1]


class TagCleaner:
    """Configurable tag cleaning: stop list, minimum length, singularisation, vocabulary.

    ``normalize``/``clean`` are pure (memoised); ``fit`` learns a vocabulary of tags used by
    at least ``min_count`` images (at most ``max_vocabulary``), which ``transform`` keeps.
    """

    def __init__(
        self,
        stop_words: Iterable[str] | None = None,
        *,
        extra_stop_words: Iterable[str] = (),
        min_count: int = 2,
        min_length: int = 2,
        singularize: bool = True,
        max_vocabulary: int | None = None,
    ):
        base = STOP_WORDS if stop_words is None else frozenset(w.lower() for w in stop_words)
        self.stop_words: frozenset[str] = base | frozenset(w.lower() for w in extra_stop_words)
        if min_count < 1 or min_length < 1:
            raise ValueError(f"min_count and min_length must be >= 1; got {min_count}, {min_length}")
        self.min_count = min_count
        self.min_length = min_length
        self.singularize = singularize
        self.max_vocabulary = max_vocabulary
        self.vocabulary: list[str] | None = None
        self._vocab_set: frozenset[str] = frozenset()
        self._memo: dict[str, str | None] = {}

    # ------------------------------------------------------------------ one tag

    def normalize(self, tag: str) -> str | None:
        """Canonical form of one raw tag, or None if it is junk (see the module docstring)."""
        try:
            return self._memo[tag]
        except KeyError:
            pass
        out = self._normalize(tag)
        if len(self._memo) > 1_000_000:  # bound the memo on endless streams of new tags
            self._memo.clear()
        self._memo[tag] = out
        return out

    def _normalize(self, tag: str) -> str | None:
        t = unicodedata.normalize("NFKC", str(tag)).strip().lower()
        if not t or t in KEEP_TAGS:
            return t if len(t) >= self.min_length else None
        if any(p.search(t) for p in _JUNK_PATTERNS):
            return None
        t = _APOSTROPHE.sub("", _POSSESSIVE.sub("", t))
        t = _SPACES.sub(" ", _NON_WORD.sub(" ", t)).strip()
        if not _HAS_LETTER.search(t):
            return None  # numbers, years, 1/250 ...
        if t in KEEP_TAGS:
            return t
        words = t.split()
        while words and words[0] in self.stop_words:
            words.pop(0)
        while words and words[-1] in self.stop_words:
            words.pop()
        if not words or all(self._is_junk_word(w) for w in words):
            return None
        if len(words) == 1 and (words[0] in META_TAGS or any(p.search(words[0]) for p in _JUNK_PATTERNS)):
            return None
        if self.singularize:
            one = singularize(words[-1])
            if one not in self.stop_words:  # keeps normalize idempotent
                words[-1] = one
        t = " ".join(words)
        return t if len(t) >= self.min_length else None

    def _is_junk_word(self, w: str) -> bool:
        return (
            w in self.stop_words
            or w in CAMERA_WORDS
            or len(w) < 2
            or not _HAS_LETTER.search(w)
            or (w not in KEEP_TAGS and any(p.search(w) for p in _JUNK_PATTERNS))
        )

    # ------------------------------------------------------------------ tag lists

    def clean(self, tags: Iterable[str]) -> list[str]:
        """Normalise every tag, drop the junk and de-duplicate, keeping first-seen order."""
        seen: dict[str, None] = {}
        for tag in tags:
            t = self.normalize(tag)
            if t is not None:
                seen.setdefault(t, None)
        return list(seen)

    def fit(self, tag_lists: Iterable[Iterable[str]]) -> TagCleaner:
        """Learn the vocabulary of cleaned tags carried by at least ``min_count`` images."""
        vocab = build_vocabulary(
            (self.clean(tags) for tags in tag_lists), min_count=self.min_count, max_size=self.max_vocabulary
        )
        self.vocabulary = vocab
        self._vocab_set = frozenset(vocab)
        return self

    def transform(self, tag_lists: Iterable[Iterable[str]]) -> list[list[str]]:
        """Clean each list and keep only vocabulary tags (all clean tags before ``fit``)."""
        if self.vocabulary is None:
            return [self.clean(tags) for tags in tag_lists]
        vocab = self._vocab_set
        return [[t for t in self.clean(tags) if t in vocab] for tags in tag_lists]

    def fit_transform(self, tag_lists: Sequence[Iterable[str]]) -> list[list[str]]:
        """``fit`` then ``transform`` on the same lists."""
        return self.fit(tag_lists).transform(tag_lists)


def build_vocabulary(
    tag_lists: Iterable[Iterable[str]], min_count: int = 2, *, max_size: int | None = None
) -> list[str]:
    """Tags carried by at least ``min_count`` images, most frequent first (ties alphabetical).

    Tags are counted as given, once per image: clean them first (:func:`clean_tags`).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1; got {min_count}")
    counts: Counter[str] = Counter()
    for tags in tag_lists:
        counts.update(set(tags))
    vocab = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return vocab if max_size is None else vocab[:max_size]


_DEFAULT = TagCleaner()


def normalize_tag(tag: str) -> str | None:
    """Canonical form of one raw tag with the default rules, or None when it is junk."""
    return _DEFAULT.normalize(tag)


def clean_tags(tags: Iterable[str]) -> list[str]:
    """Normalise, drop junk and de-duplicate one image's tags (first-seen order kept)."""
    return _DEFAULT.clean(tags)
