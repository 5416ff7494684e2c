"""Zero-shot diagnosis app: `medvlp app diagnose` (Streamlit). Thin: logic in medvlp.app.support."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medvlp.app import support as sup
from medvlp.app.ui import choose_domain_and_model, label_editor, read_uploads, require_access
from medvlp.errors import MedvlpError

st.set_page_config(page_title="medvlp · diagnose", layout="wide")
st.title("Zero-shot diagnosis")
require_access()

card, model = choose_domain_and_model()
if model is None:
    st.info("Choose a model in the sidebar (or train the demo model) to start.")
    st.stop()

left, right = st.columns([1, 2])
with left:
    labels = label_editor(card, model)
with right:
    files = st.file_uploader(
        f"Images (PNG, JPEG, TIFF incl. multichannel microscopy, DICOM; up to {sup.MAX_UPLOAD_MB} MB each)",
        type=list(sup.UPLOAD_TYPES), accept_multiple_files=True, key="uploads")
    uploads = read_uploads(list(files or []), card)

if labels is None or not uploads:
    if labels is not None:
        st.info("Upload one or more images to see the diagnosis.")
    st.stop()

try:
    results = model.zero_shot([u.image for u in uploads], labels=labels)
except MedvlpError as e:
    st.error(f"Diagnosis failed: {e}")
    st.stop()
for u, r in zip(uploads, results, strict=True):
    r.image = u.name

st.subheader("Results")
for u, r in zip(uploads, results, strict=True):
    with st.container(border=True):
        c1, c2 = st.columns([1, 2])
        with c1:
            st.image(u.image, caption=u.name, width=256)
        with c2:
            st.markdown(f"**{u.name}** · top label: **{r.top_label}** (p = {r.probabilities[r.top_label]:.3f})")
            st.bar_chart(pd.DataFrame({"probability": r.probabilities}), horizontal=True,
                         height=40 + 28 * len(r.probabilities))
            cov = f" at {r.coverage:.0%} coverage" if r.coverage else ""
            st.markdown(f"Prediction set{cov}: {', '.join(r.prediction_set)}")
            st.caption("calibrated: yes (temperature + conformal)" if r.calibrated else
                       "calibrated: no (raw softmax; the set holds 90% of the probability mass)")
            if r.unknown_labels:
                st.caption(f"labels without a concept in the card (prompted as raw text): {', '.join(r.unknown_labels)}")

table = sup.results_table(results)
st.dataframe(table, hide_index=True)
d1, d2 = st.columns(2)
d1.download_button("Download CSV", table.to_csv(index=False), file_name="medvlp_diagnosis.csv", mime="text/csv")
d2.download_button("Download JSON", sup.results_json(results), file_name="medvlp_diagnosis.json",
                   mime="application/json")
