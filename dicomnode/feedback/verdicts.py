"""Per-finding verdicts from a radiologist's report text: present, absent, uncertain or not mentioned.

A ConText/NegEx-style reading (the rules are data: :mod:`dicomnode.feedback.terms`). The text is cut into sections
(skipped ones, e.g. INDICATION, are not read), sentences and clauses; in each clause the finding mentions and the
cues are found (longest phrase first, whole words); a ``*_before`` cue acts on the mentions after it in its clause, an
``*_after`` cue on those before it. Uncertainty wins over negation; an ``ignore_before`` cue (what was asked, the
patient's history) takes the mention out. Over the whole report a finding is present when any mention is present,
else uncertain when any is uncertain, else absent when any is absent, else not mentioned (the CheXpert labeller's
aggregation). Pure: text in, verdicts out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from dicomnode.feedback.terms import Terms

EVIDENCE_CHARS = 200


class Verdict(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"


_RANK = {Verdict.PRESENT: 3, Verdict.UNCERTAIN: 2, Verdict.ABSENT: 1, Verdict.NOT_MENTIONED: 0}


@dataclass(frozen=True)
class FindingVerdict:
    finding: str
    verdict: Verdict
    evidence: str = ""  # the sentence that decided it (may hold free text of the report: never logged at INFO)


# roles a matched phrase can have (a phrase listed in several cue lists has all of them)
NEG_BEFORE, NEG_AFTER, UNC_BEFORE, UNC_AFTER, IGNORE, PSEUDO, UNRELATED, TERMINATE = (
    "negation_before", "negation_after", "uncertain_before", "uncertain_after", "ignore_before", "pseudo",
    "unrelated", "terminate")


@dataclass(frozen=True)
class _Phrase:
    roles: frozenset[str]  # cue roles; empty for a finding mention
    findings: tuple[str, ...] = ()  # the findings a mention names
    absent: bool = False  # an "absent" phrase ("heart size is normal")


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    phrase: _Phrase


class Reader:
    """Reads reports with one rule set (build once: it compiles one pattern of every phrase)."""

    def __init__(self, terms: Terms) -> None:
        self.terms = terms
        phrases: dict[str, _Phrase] = {}

        def add(text: str, role: str | None = None, finding: str | None = None, absent: bool = False) -> None:
            old = phrases.get(text, _Phrase(frozenset()))
            phrases[text] = _Phrase(old.roles | ({role} if role else set()),
                                    old.findings + ((finding,) if finding and finding not in old.findings else ()),
                                    old.absent or absent)

        for role, values in terms.cues.model_dump().items():
            if role != "terminate_after_comma":
                for value in values:
                    add(value, role)
        for key, finding in terms.findings.items():
            for value in finding.mentions:
                add(value, finding=key)
            for value in finding.absent:
                add(value, finding=key, absent=True)
        self._phrases = phrases
        # longest first: at one position the longer phrase wins ("no evidence of" over "no")
        alternatives = sorted(phrases, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![\w-])(?:" + "|".join(_phrase_regex(p) for p in alternatives) + r")(?![\w-])")
        after_comma = "|".join(_phrase_regex(p) for p in terms.cues.terminate_after_comma)
        self._comma_break = re.compile(r",\s*(?=(?:" + after_comma + r")(?![\w-]))") if after_comma else None
        skip = "|".join(_phrase_regex(p) for p in sorted(terms.sections.skip, key=len, reverse=True))
        self._heading = re.compile(r"(?im)^[ \t]*([a-z][a-z /&]{1,40}?)[ \t]*:")
        self._skip = re.compile(r"(?:" + skip + r")$") if skip else None

    # -- text ------------------------------------------------------------------------------------------------
    def read_sections(self, text: str) -> list[str]:
        """The parts of ``text`` to read: every section but the skipped ones (all of it without headings)."""
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        parts: list[str] = []
        position, skipping = 0, False
        for heading in self._heading.finditer(text):
            if not skipping:
                parts.append(text[position:heading.start()])
            name = " ".join(heading.group(1).lower().split())
            skipping = bool(self._skip and self._skip.match(name))
            position = heading.end()
        if not skipping:
            parts.append(text[position:])
        return [p for p in parts if p.strip()]

    @staticmethod
    def sentences(section: str) -> list[str]:
        """Sentences of a section. A line break ends a sentence unless the next line goes on in lower case (a
        wrapped line)."""
        joined = re.sub(r"\n[ \t]*(?=[a-z(,])", " ", section.strip())
        pieces = re.split(r"(?<=[.!?;])\s+|\n+|(?<=[a-z)])\.(?=[A-Z])", joined)
        return [" ".join(p.split()) for p in pieces if p and p.strip(" .")]

    def clauses(self, sentence: str) -> list[str]:
        """A sentence cut at its ``terminate`` cues, and at a comma before a ``terminate_after_comma`` word."""
        lowered = sentence.lower()
        cuts = [m.start() for m in self._comma_break.finditer(lowered)] if self._comma_break else []
        clauses, start = [], 0
        for match in self._pattern.finditer(lowered):
            if TERMINATE in self._phrases[_key(match.group(0))].roles:
                cuts.append(match.start())
        for cut in sorted(set(cuts)):
            clauses.append(lowered[start:cut])
            start = cut
        clauses.append(lowered[start:])
        return [c for c in clauses if c.strip()]

    # -- verdicts --------------------------------------------------------------------------------------------
    def clause_verdicts(self, clause: str) -> list[tuple[str, Verdict]]:
        """(finding, verdict) for each mention in one clause (lower case)."""
        matches = [_Match(m.start(), m.end(), self._phrases[_key(m.group(0))]) for m in self._pattern.finditer(clause)]
        out: list[tuple[str, Verdict]] = []
        for index, match in enumerate(matches):
            phrase = match.phrase
            if not phrase.findings or UNRELATED in phrase.roles:
                continue
            before = [m.phrase.roles for m in matches[:index]]
            after = [m.phrase.roles for m in matches[index + 1:]]
            if any(IGNORE in roles for roles in before):
                continue
            uncertain = any(UNC_BEFORE in r for r in before) or any(UNC_AFTER in r for r in after)
            negated = any(NEG_BEFORE in r for r in before) or any(NEG_AFTER in r for r in after)
            if phrase.absent:
                verdict = Verdict.UNCERTAIN if uncertain else Verdict.ABSENT
            elif uncertain:
                verdict = Verdict.UNCERTAIN
            elif negated:
                verdict = Verdict.ABSENT
            else:
                verdict = Verdict.PRESENT
            out += [(finding, verdict) for finding in phrase.findings]
        return out

    def read(self, text: str) -> dict[str, FindingVerdict]:
        """The verdict of every finding of the rule set for a report ``text``."""
        best: dict[str, FindingVerdict] = {key: FindingVerdict(key, Verdict.NOT_MENTIONED)
                                           for key in self.terms.findings}

        def keep(finding: str, verdict: Verdict, sentence: str) -> None:
            if _RANK[verdict] > _RANK[best[finding].verdict]:
                best[finding] = FindingVerdict(finding, verdict, sentence[:EVIDENCE_CHARS])

        for section in self.read_sections(text):
            for sentence in self.sentences(section):
                for clause in self.clauses(sentence):
                    for finding, verdict in self.clause_verdicts(clause):
                        keep(finding, verdict, sentence)
                        if verdict is Verdict.PRESENT:
                            for implied in self.terms.findings[finding].implies:
                                keep(implied, Verdict.PRESENT, sentence)
        return best


def _key(matched: str) -> str:
    return " ".join(matched.lower().split())


def _phrase_regex(phrase: str) -> str:
    return r"\s+".join(re.escape(word) for word in phrase.split())


_READERS: dict[int, tuple[Terms, Reader]] = {}


def reader(terms: Terms) -> Reader:
    """One :class:`Reader` per rule set (kept while the process runs; a node has one or two)."""
    held = _READERS.get(id(terms))
    if held is None or held[0] is not terms:
        held = _READERS[id(terms)] = (terms, Reader(terms))
    return held[1]


def read_report(text: str, terms: Terms) -> dict[str, FindingVerdict]:
    """Verdicts of ``text`` under ``terms`` (see :meth:`Reader.read`)."""
    return reader(terms).read(text)
