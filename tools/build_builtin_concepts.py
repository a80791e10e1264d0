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
            hypernyms, hyponyms = [], []
            for _ in range(p_cnt):
                sym, off, pos = parts[i], int(parts[i + 1]), parts[i + 2]
                i += 4
                if pos != "n":
                    continue
                if sym in ("@", "@i"):
                    hypernyms.append(off)
                elif sym in ("~", "~i"):
                    hyponyms.append(off)
            synsets[offset] = {
                "lemmas": lemmas,
                "hypernyms": hypernyms,
                "hyponyms": hyponyms,
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
    args.out.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    out = args.out / "builtin_concepts.json.gz"
    out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    print(
        f"{len(concepts)} concepts, {len(lemma_index)} lemma keys, {len(exceptions)} plural exceptions, "
        f"{len(other_words)} other words, {len(too_broad)} too-broad lemmas"
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
