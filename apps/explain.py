"""Explanation app: `medvlp app explain` (Streamlit). Thin: logic in medvlp.explain."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from medvlp.app import support as sup
from medvlp.app.ui import choose_domain_and_model, label_editor, read_uploads, require_access, server_path
from medvlp.errors import MedvlpError

st.set_page_config(page_title="medvlp · explain", layout="wide")
st.title("Why this diagnosis?")
require_access()

card, model = choose_domain_and_model()
tab_image, tab_slide = st.tabs(["Image", "Slide heatmap"])

with tab_slide:
    from medvlp.explain import overlay, slide_heatmap_from_h5

    st.caption("Tile scores over the slide thumbnail: an HDF5 file with `coords` (N, 2, level-0 x, y), `scores` "
               "(N,) or (N, C) and the tile size attribute (`patch_size_level0`, as `medvlp wsi tile` writes).")
    h5 = st.file_uploader("Tile scores (.h5)", type=["h5", "hdf5"], key="slide_h5")
    thumb_file = st.file_uploader("Thumbnail image (optional)", type=["png", "jpg", "jpeg"], key="slide_thumb")
    # a slide on the server only under --data-root; a path stored inside the uploaded file is never followed
    slide_path = server_path("or the slide file on this machine (optional)", key="slide_path")
    if h5 is not None:
        import tempfile
        from pathlib import Path

        from PIL import Image

        try:
            sup.check_upload_size(h5.size, name=h5.name)
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "scores.h5"
                p.write_bytes(h5.getvalue())
                from medvlp.explain import read_tile_scores_h5

                columns = list(read_tile_scores_h5(p)["scores"])
                col = st.selectbox("Score", columns, key="slide_score")
                thumb = Image.open(thumb_file).convert("RGB") if thumb_file is not None else None
                thumb, hm, used = slide_heatmap_from_h5(p, thumb, score=col, slide=slide_path)
            alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="slide_alpha")
            st.image(overlay(thumb, hm, alpha), caption=f"{used}: {int((~pd.isna(hm)).sum())} thumbnail pixels "
                     "covered by tiles", width="stretch")
        except (MedvlpError, OSError) as e:
            st.error(f"Slide heatmap: {e}")

with tab_image:
    if model is None:
        st.info("Choose a model in the sidebar (or train the demo model) to explain an image.")
        st.stop()
    left, right = st.columns([1, 2])
    with left:
        labels = label_editor(card, model, key="x_labels")
        from medvlp.explain.concepts import resolve_concepts

        default_concepts = [s.name for s in resolve_concepts(card)] if card.explain_concepts else []
        concept_text = st.text_area("Concepts (one per line; ontology ids or names)",
                                    value="\n".join(default_concepts), key=f"concepts_{card.name}", height=160)
        concepts = [c.strip() for c in concept_text.splitlines() if c.strip()]
    with right:
        files = st.file_uploader("Image", type=list(sup.UPLOAD_TYPES), key="x_upload")
        uploads = read_uploads([files] if files is not None else [], card)
    if labels is None or not uploads:
        if labels is not None:
            st.info("Upload an image to explain.")
        st.stop()
    if not concepts:
        st.error("Concepts: the list is empty; add at least one concept")
        st.stop()
    up = uploads[0]

    cbm = st.session_state.get(f"cbm_{card.name}")
    try:
        result = model.zero_shot(up.image, labels=labels)
        ex = result.explain(concepts=concepts, gradcam=True, bottleneck=cbm)
    except MedvlpError as e:
        st.error(f"Explanation failed: {e}")
        st.stop()
    st.markdown(f"**{up.name}** · top label: **{result.top_label}** "
                f"(p = {result.probabilities[result.top_label]:.3f}); heatmaps from the "
                f"{ex.heatmap_source.replace('_', ' ')}")

    c1, c2, c3 = st.columns(3)
    with c1:
        st.subheader("Top concepts")
        st.dataframe(pd.DataFrame(ex.concepts, columns=["concept", "score"]), hide_index=True)
    with c2:
        st.subheader("Heatmap")
        keys = list(ex.heatmaps)
        key = st.selectbox("Label or concept", keys, key="hm_key",
                           index=keys.index(result.top_label) if result.top_label in keys else 0)
        alpha = st.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="hm_alpha")
        st.image(ex.overlay(key, alpha, size=320), caption=f"{key} ({ex.heatmap_source.replace('_', ' ')})")
    with c3:
        st.subheader("Grad-CAM")
        if ex.gradcam:
            target = next(iter(ex.gradcam))
            st.image(ex.overlay(target, alpha, kind="gradcam", size=320), caption=f"Grad-CAM: {target}")
        else:
            st.caption("; ".join(ex.notes) or "Grad-CAM unavailable")

    st.subheader("Concept bottleneck")
    st.caption("A logistic regression on concept scores only; its weights are the explanation.")
    def _use_demo() -> None:
        from medvlp.data.synthetic import demo_manifest

        st.session_state["cbm_manifest"] = str(demo_manifest("pathology", n_per_class=30, progress=False,
                                                                variant="tiles"))

    manifest = st.session_state.get("cbm_manifest") or server_path(
        "Labelled manifest to fit it on (CSV/JSONL/Parquet with image and label)", key="cbm_manifest_path") or ""
    if manifest:
        st.caption(f"manifest: `{Path(manifest).name}`")
    cols = st.columns(2)
    if card.name == "pathology":
        cols[1].button("Use the demo corpus", key="cbm_demo", on_click=_use_demo)
    if cols[0].button("Fit the concept bottleneck", key="cbm_fit"):
        from medvlp.explain import fit_concept_bottleneck

        try:
            if not manifest.strip():
                raise MedvlpError("give a labelled manifest first")
            st.session_state[f"cbm_{card.name}"] = fit_concept_bottleneck(model, manifest.strip(), concepts)
            st.rerun()
        except MedvlpError as e:
            st.error(f"Concept bottleneck: {e}")
    if cbm is not None and ex.bottleneck is not None:
        st.markdown(f"Bottleneck prediction: **{ex.bottleneck_label}** (training accuracy "
                    f"{cbm.train_accuracy:.2f} on {cbm.n_train} images)")
        b1, b2 = st.columns(2)
        b1.caption(f"Contributions to '{ex.bottleneck_label}' for this image (weight x standardised score)")
        b1.dataframe(pd.DataFrame(ex.bottleneck, columns=["concept", "contribution"]), hide_index=True)
        b2.caption("Weights (rows: labels, columns: concepts)")
        b2.dataframe(pd.DataFrame(cbm.weights()).T.round(3))
