"""Concept matcher: synonyms, case/punctuation, longest match, spans, negation/uncertainty."""

from __future__ import annotations

from medvlp.ontology import Concept, ConceptGraph, ConceptMatcher, load_ontology


def spans(matcher, text):
    return [(m.start, m.end, m.concept_id, m.negated, m.uncertain) for m in matcher.match(text)]


def test_synonyms_case_punctuation_and_longest_match(small_graph):
    m = ConceptMatcher(small_graph)
    text = "LOBAR PNEUMONIA with Pleural-Effusions, lung infection; fluid in the pleural space."
    assert spans(m, text) == [
        (0, 15, "t:lobar", False, False),  # longest: "lobar pneumonia", not "pneumonia"
        (21, 38, "t:effusion", False, False),  # hyphen and plural tolerated
        (40, 54, "t:pneumonia", False, False),  # synonym
        (56, 82, "t:effusion", False, False),  # multi-word synonym wins over "pleural space"
    ]
    for start, end, *_ in spans(m, text):
        assert text[start:end] in ("LOBAR PNEUMONIA", "Pleural-Effusions", "lung infection",
                                   "fluid in the pleural space")
    # abbreviations match only in capitals
    assert spans(m, "ARDS pattern") == [(0, 4, "t:ards", False, False)]
    assert spans(m, "cards") == []


def test_negation_and_uncertainty_cues(small_graph):
    m = ConceptMatcher(small_graph)
    cases = {
        "No pleural effusion.": [(3, 19, "t:effusion", True, False)],
        "Without consolidation or effusion.": [(8, 21, "t:consolidation", True, False),
                                               (25, 33, "t:effusion", True, False)],
        "Negative for pneumonia.": [(13, 22, "t:pneumonia", True, False)],
        "Possible pneumonia.": [(9, 18, "t:pneumonia", False, True)],
        "Cannot exclude consolidation.": [(15, 28, "t:consolidation", False, True)],
        "Effusion has been ruled out.": [(0, 8, "t:effusion", True, False)],
        # the cue ends at the clause boundary and at "but"
        "No effusion. Consolidation present.": [(3, 11, "t:effusion", True, False),
                                                (13, 26, "t:consolidation", False, False)],
        "No effusion but pneumonia.": [(3, 11, "t:effusion", True, False), (16, 25, "t:pneumonia", False, False)],
        # pseudo-negation "no change" negates nothing
        "No change in the effusion.": [(17, 25, "t:effusion", False, False)],
    }
    for text, expected in cases.items():
        assert spans(m, text) == expected, text


def test_cue_word_that_is_also_a_concept_stays_a_cue():
    g = ConceptGraph([Concept("q:possible", "possible"), Concept("c:pneumonia", "pneumonia")])
    assert spans(ConceptMatcher(g), "Possible pneumonia") == [(9, 18, "c:pneumonia", False, True)]


def test_bundled_cxr_caption():
    m = ConceptMatcher(load_ontology("cxr"))
    text = "No pneumothorax. Possible left lower lobe pneumonia; small right pleural effusion."
    got = {(s, e, cid): (neg, unc) for s, e, cid, neg, unc in spans(m, text)}
    assert got[(3, 15, "cxr:pneumothorax")] == (True, False)
    assert got[(42, 51, "cxr:pneumonia")] == (False, True)
    assert got[(65, 81, "cxr:pleural_effusion")] == (False, False)


def test_hpo_vocabulary(hpo_graph):
    m = ConceptMatcher(hpo_graph)
    assert len(m) > 35_000  # names + synonyms of ~19k terms
    text = "Patient has seizures and no cleft palate; possible macrocephaly."
    assert spans(m, text) == [(12, 20, "HP:0001250", False, False), (28, 40, "HP:0000175", True, False),
                              (51, 63, "HP:0000256", False, True)]
    assert m.match("All of them.") == []  # HPO's root "All" is not a mention
