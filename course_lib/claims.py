"""The article, checked: each claim of the article the course answers, and the verdict a chapter computes.

The course answers one article, *Beyond Scale: How AI Models Are Being Redesigned for
Real-World Efficiency*. Its claims are data here (:data:`CLAIMS`: id, the article's words,
its section, the chapter that tests it), not prose scattered over notebooks. A chapter
records its verdict with one call,

    claims.verdict("Q1", "holds with a caveat", f"int8 weights take {r:.2f}× fewer bytes ...")

which shows a callout quoting the claim, and stores the verdict in the output's metadata
(``course_verdict``). The book page *The article, checked* is built from the verdicts found
in the **executed** notebooks (:func:`collect`, :func:`page_markdown`), so every verdict on
it was computed on the machine that built the site; nothing is typed. Claims of chapters
that do not exist yet show "chapter planned".

The four verdicts:

* ``holds`` — what the chapter measured (or a published source shows) agrees;
* ``holds with a caveat`` — agrees only under a condition the evidence states;
* ``does not hold`` — the measurement contradicts it (on this machine or at this scale);
* ``cannot be checked`` — nothing public or measurable here settles it (say why).

``python scripts/article_page.py build/executed book/article_checked.md`` writes the page
(``make book`` runs it before building the site).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

VERDICTS = ("holds", "holds with a caveat", "does not hold", "cannot be checked")
#: Output-metadata key under which a verdict travels in an executed notebook.
METADATA_KEY = "course_verdict"
#: The shortest evidence sentence accepted: a verdict must say what was found.
MIN_EVIDENCE_CHARS = 20


@dataclass(frozen=True)
class Claim:
    """One claim of the article: id, its words (short quote), its section, the chapter that tests it."""

    id: str
    words: str
    section: str
    chapter: str  # two digits, e.g. "05"


_SCALING = "The scaling wall"
_ARCH = "Sparse and conditional architectures"
_COMPRESS = "Compression: quantization and pruning"
_DATA = "Data-centric efficiency"
_AUGMENT = "Retrieval, tools and specialists"
_HW = "Hardware-aware design"
_CASES = "Case studies"
_SYSTEM = "The rise of the system and the new metrics"

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim("S1", "Training a model like GPT-4 is estimated to cost over $100 million", _SCALING, "00"),
        Claim(
            "S2",
            "A single large model training run can have the lifetime carbon footprint of several cars",
            _SCALING,
            "00",
        ),
        Claim(
            "S3",
            "A 1-trillion-parameter model for a simple chatbot query: cost per inference "
            "“enormous, leading to slow response times”",
            _SCALING,
            "00",
        ),
        Claim("S4", "Spending exponentially more for linearly improving (or even plateauing) results", _SCALING, "00"),
        Claim(
            "M1",
            "For a 1-trillion-parameter MoE model, only a fraction (e.g., 50-100 billion parameters) might be active",
            _ARCH,
            "02",
        ),
        Claim(
            "M2",
            "MoE offers superior quality at a fraction of the inference cost of a similarly-sized dense model",
            _ARCH,
            "02",
        ),
        Claim(
            "M3",
            "MoE trade-offs: routing “can be a bottleneck”, “training stability is also a challenge”",
            _ARCH,
            "02",
        ),
        Claim(
            "A1",
            "Sparse attention patterns reduce this to O(n) or O(n log n), enabling much longer context windows",
            _ARCH,
            "03",
        ),
        Claim(
            "A2",
            "Activation sparsity: layers that naturally produce many zero activations, "
            "allowing for optimized computation on hardware",
            _ARCH,
            "04",
        ),
        Claim(
            "Q1",
            "INT8, 4-bit (GPTQ, AWQ) or 2-bit quantization drastically reduce model size and memory "
            "bandwidth requirements ... with minimal accuracy loss",
            _COMPRESS,
            "05",
        ),
        Claim(
            "P1",
            "Structured pruning removes entire neurons or channels, creating models that are inherently "
            "smaller and faster on standard hardware",
            _COMPRESS,
            "06",
        ),
        Claim(
            "D1",
            "A smaller set of high-quality ... data can train a more capable model than a larger set of "
            "noisy, redundant web text",
            _DATA,
            "07",
        ),
        Claim(
            "D2",
            "Synthetic data can create data for rare scenarios without the need to scrape billions of "
            "irrelevant web pages",
            _DATA,
            "07",
        ),
        Claim(
            "D3",
            "Curriculum learning can lead to faster convergence and better final performance with less total compute",
            _DATA,
            "07",
        ),
        Claim(
            "R1",
            "RAG reduces the need for massive parametric memory, improves factual accuracy, and allows for "
            "easy knowledge updates without retraining",
            _AUGMENT,
            "08",
        ),
        Claim("T1", "With tools, the core language model can be smaller", _AUGMENT, "09"),
        Claim(
            "Y2",
            "Domain-specific models are smaller, faster, and more accurate for their niche than a giant generalist model",
            _AUGMENT,
            "10",
        ),
        Claim(
            "K1",
            "The model architecture is now influenced by what can be executed efficiently on these kernels",
            _HW,
            "11",
        ),
        Claim(
            "E1",
            "Edge AI needs models that fit in tight memory budgets (sub-1GB); Phi-3-mini (3.8B) as the example",
            _HW,
            "11",
        ),
        Claim(
            "C1",
            "Mixtral 8x7B: a 45B parameter MoE model that outperforms ... Llama 2 70B on many benchmarks "
            "while being 6x faster for inference",
            _CASES,
            "12",
        ),
        Claim(
            "C2",
            "GLaM: 1.2T MoE ... 1/3 the training energy of a dense model of comparable quality "
            "(comparable performance to GPT-3)",
            _CASES,
            "12",
        ),
        Claim("C3", "GPT-4 and Mixtral 8x7B ... are confirmed to use MoE architectures", _CASES, "12"),
        Claim("C4", "Phi-3 (3.8B, 14B) rival models 3-5x their size", _CASES, "12"),
        Claim(
            "C5",
            "Claude 3 Haiku is explicitly optimized for near-instant responsiveness and low-cost applications",
            _CASES,
            "12",
        ),
        Claim(
            "Y1",
            "Efficient models let teams fine-tune and deploy state-of-the-art models on a single GPU",
            _SYSTEM,
            "13",
        ),
        Claim(
            "Y3",
            "The winning AI product will be an orchestrated system of specialized components "
            "(small LLM, retriever, tool, verifier)",
            _SYSTEM,
            "13",
        ),
        Claim(
            "Y4", "Tokens/second per dollar, energy per inference, and time-to-accuracy as benchmarks", _SYSTEM, "13"
        ),
        Claim("Y5", "The carbon footprint of AI will become a standard reporting metric", _SYSTEM, "13"),
    ]
}


@dataclass(frozen=True)
class Verdict:
    """A chapter's verdict on one claim; renders as a callout quoting the claim."""

    claim: Claim
    status: str
    evidence: str

    def to_dict(self) -> dict:
        return {"id": self.claim.id, "chapter": self.claim.chapter, "status": self.status, "evidence": self.evidence}

    def _markdown(self) -> str:
        return (
            f"> **The article, checked — claim {self.claim.id}: {self.status}.**\n>\n"
            f"> *“{self.claim.words}”*\n>\n> {self.evidence}"
        )

    def _html(self) -> str:
        kind = self.status.replace(" ", "-")
        return (
            f'<div class="course-verdict course-verdict-{kind}" role="note">'
            f"<p><strong>The article, checked — claim {self.claim.id}: {html.escape(self.status)}.</strong></p>"
            f"<blockquote><em>“{html.escape(self.claim.words)}”</em></blockquote>"
            f"<p>{html.escape(self.evidence)}</p></div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = {"text/html": self._html(), "text/markdown": self._markdown(), "text/plain": self._markdown()}
        return data, {METADATA_KEY: self.to_dict()}


def verdict(claim_id: str, status: str, evidence: str, *, show: bool = True) -> Verdict | None:
    """Record a chapter's verdict on claim ``claim_id``: ``status`` one of :data:`VERDICTS`.

    ``evidence`` is one sentence built from the numbers the chapter computed (or a cited
    source). The verdict is displayed (a callout quoting the claim) and carried in the
    output's metadata, where the book's page finds it. With ``show=False`` it returns the
    :class:`Verdict` instead of displaying it.
    """
    if not isinstance(claim_id, str) or claim_id not in CLAIMS:
        raise ValueError(f"claim_id must be one of {sorted(CLAIMS)}, got {claim_id!r}")
    if status not in VERDICTS:
        raise ValueError(f"status must be one of {list(VERDICTS)}, got {status!r}")
    if not isinstance(evidence, str) or len(evidence.strip()) < MIN_EVIDENCE_CHARS:
        raise ValueError(
            f"evidence must be a sentence of at least {MIN_EVIDENCE_CHARS} characters saying what was found, "
            f"got {evidence!r}"
        )
    v = Verdict(CLAIMS[claim_id], status, evidence.strip())
    if not show:
        return v
    from IPython.display import display

    display(v)
    return None  # not the Verdict: as a cell's last expression it would be displayed (and recorded) twice


# --------------------------------------------------------------------------- the book page


def collect(executed_dir: Path | str) -> dict[str, list[dict]]:
    """``{claim id: [verdict dicts]}`` found in the outputs of the executed notebooks in ``executed_dir``.

    Each verdict dict gains ``notebook`` (the file name). A claim with two entries was
    given two verdicts; :func:`problems` reports it.
    """
    import nbformat

    found: dict[str, list[dict]] = {}
    for path in sorted(Path(executed_dir).glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
                meta = out.get("metadata", {}).get(METADATA_KEY)
                if meta:
                    found.setdefault(meta["id"], []).append({**meta, "notebook": path.name})
    return found


def chapters_present(notebooks_dir: Path | str) -> set[str]:
    """Two-digit numbers of the chapters that exist (``notebooks/NN_*.py``)."""
    return {p.name[:2] for p in Path(notebooks_dir).glob("[0-9][0-9]_*.py")}


def problems(found: dict[str, list[dict]], present: set[str]) -> list[str]:
    """What is wrong with the recorded verdicts: missing, doubled, empty, unknown, or from the wrong chapter."""
    bad = []
    for cid, claim in CLAIMS.items():
        got = found.get(cid, [])
        if claim.chapter in present and not got:
            bad.append(f"{cid}: chapter {claim.chapter} exists but recorded no verdict")
        if len(got) > 1:
            bad.append(f"{cid}: {len(got)} verdicts ({', '.join(v['notebook'] for v in got)})")
        for v in got:
            if v.get("status") not in VERDICTS:
                bad.append(f"{cid}: unknown verdict {v.get('status')!r}")
            if len(str(v.get("evidence", "")).strip()) < MIN_EVIDENCE_CHARS:
                bad.append(f"{cid}: verdict without evidence")
            if not v["notebook"].startswith(claim.chapter):
                bad.append(f"{cid}: belongs to chapter {claim.chapter}, recorded in {v['notebook']}")
    bad += [f"{cid}: not a claim of the article" for cid in found if cid not in CLAIMS]
    return bad


def _text(s: str) -> str:
    """Markdown-safe prose: a dollar sign is money, not the start of math."""
    return str(s).replace("$", "\\$").replace("\n", " ")


def page_markdown(found: dict[str, list[dict]], present: set[str], *, machine_line: str = "") -> str:
    """The book page: per section, each claim with its verdict, evidence and a link to its chapter."""
    counts = {s: 0 for s in VERDICTS}
    for got in found.values():
        for v in got:
            counts[v["status"]] = counts.get(v["status"], 0) + 1
    lines = [
        "# The article, checked",
        "",
        "The course answers one article, *Beyond Scale: How AI Models Are Being Redesigned for Real-World "
        "Efficiency*. Below is each of its claims, quoted, with the verdict the chapter that tests it "
        "computed when this site was built — from the numbers measured on the build machine or from the "
        "published sources the chapter cites. Nothing on this page is typed by hand: it is collected from "
        "the executed notebooks (`scripts/article_page.py`).",
        "",
        f"Built on: {machine_line}" if machine_line else "",
        "",
        "Verdicts so far: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + "."
        if any(counts.values())
        else "",
        "",
    ]
    for section in dict.fromkeys(c.section for c in CLAIMS.values()):
        lines += [f"## {section}", ""]
        for c in (c for c in CLAIMS.values() if c.section == section):
            got = found.get(c.id, [])
            if c.chapter not in present:
                status, evidence, where = "chapter planned", "", f"chapter {c.chapter}, not written yet"
            elif not got:
                status, evidence, where = "no verdict recorded", "", f"chapter {c.chapter}"
            else:
                v = got[0]
                status, evidence = v["status"], v["evidence"]
                where = f"{{doc}}`chapter {c.chapter} <notebooks/{v['notebook'][:-6]}>`"
            # one block per claim (a table does not fit a phone); "$" is text here, not math
            lines += [
                f"**{c.id} · {status}** ({where})",
                "",
                f"> “{_text(c.words)}”",
                "",
                *([_text(evidence), ""] if evidence else []),
            ]
    return "\n".join(lines).replace("\n\n\n", "\n\n")
