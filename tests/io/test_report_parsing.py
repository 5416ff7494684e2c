"""Radiology report sections (MIMIC-CXR style) and the caption text."""

from __future__ import annotations

from medvlp.io.reports import SECTIONS, parse_report, report_text

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_sections() -> None:
    r = parse_report(MIMIC_STYLE)
    assert set(r) == set(SECTIONS)
    assert r["findings"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that "
        "most likely represent nipple shadows. The cardiomediastinal silhouette is normal."
    )
    assert r["impression"] == "No acute cardiopulmonary process."
    assert r["indication"] == "___F with new onset ascites // eval for infection"
    assert r["comparison"] == "None."
    # EXAMINATION and TECHNIQUE are both technique sections, joined in order.
    assert r["technique"] == "CHEST (PA AND LAT) Chest PA and lateral"
    assert r["other"] == "FINAL REPORT"


def test_caption_is_impression_then_findings() -> None:
    text = report_text(MIMIC_STYLE)
    assert text.startswith("No acute cardiopulmonary process. There is no focal consolidation")
    assert text.endswith("The cardiomediastinal silhouette is normal.")


def test_fallback_to_last_paragraph() -> None:
    report = (
        "WET READ: ___ 9:12 AM\n  Right lower lobe opacity.\n\n"
        "PA and lateral views of the chest were obtained.\n\n"
        "Heart size: normal. Right lower lobe pneumonia\n  is new since the prior study."
    )
    sections = parse_report(report)
    assert sections["findings"] == "" and sections["impression"] == ""
    # "Heart size:" is sentence text, not a header (not in capitals).
    assert (
        report_text(report) == "Heart size: normal. Right lower lobe pneumonia is new since the prior study."
    )
    assert report_text("") == "" and report_text("   \n\n  ") == ""
    assert report_text("NOTE: Portable film, limited study.") == "Portable film, limited study."


def test_variants_typos_and_inline_headers() -> None:
    r = parse_report(
        "CLINICAL HISTORY: Fever.\nFINDINS: Clear lungs.\nIMPRESSON: Normal chest.\nCONCLUSION: Stable."
    )
    assert r["indication"] == "Fever."
    assert r["findings"] == "Clear lungs."
    assert r["impression"] == "Normal chest. Stable."
    # A correctly spelled header running on in the middle of a line starts its section.
    r = parse_report("FINDINGS: Clear lungs. IMPRESSION: Normal chest.")
    assert r["findings"] == "Clear lungs." and r["impression"] == "Normal chest."
    r = parse_report("Findings: Small left effusion.\nImpression: Effusion.\nCompression: none seen.")
    assert r["findings"] == "Small left effusion."
    # A mixed-case word that is not a known header stays text of the section it is in.
    assert r["impression"] == "Effusion. Compression: none seen."
    r = parse_report("FINDINGS AND IMPRESSION: Cardiomegaly without edema.")
    assert r["impression"] == "Cardiomegaly without edema." and r["findings"] == ""
    r = parse_report("NOTIFICATION: Discussed with Dr. ___.\nFINDINGS: Unchanged.")
    assert r["other"] == "Discussed with Dr. ___." and r["findings"] == "Unchanged."
