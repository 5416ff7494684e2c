"""Streamlit widgets shared by the two apps: domain and model choice, label editor, uploads.

Imported only by ``apps/*.py`` (it imports Streamlit); the logic they call lives in
:mod:`medvlp.explain.app_support`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from medvlp.errors import MedvlpError
from medvlp.explain import app_support as sup


@st.cache_resource(show_spinner="Loading the model ...")
def cached_model(source: str, domain: str) -> Any:
    """Load a model once per (source, domain) for the whole server (all sessions share it)."""
    import medvlp

    return medvlp.load(source, domain=domain)


def choose_domain_and_model() -> tuple[Any, Any]:
    """Sidebar: domain, and a model (the demo model, or a run folder / zoo id). Returns (card, model or None)."""
    from medvlp.demos.corpora import DEMOS
    from medvlp.domains import list_domains, load_card

    domains = list_domains()
    domain = st.sidebar.selectbox("Domain", domains, index=domains.index("pathology") if "pathology" in domains else 0,
                                  key="domain")
    card = load_card(domain)
    st.sidebar.caption(card.title)
    mode = st.sidebar.radio("Model", ["Demo model", "Run folder or zoo id"], key="model_mode")
    if mode == "Demo model":
        demo_domain = domain if domain in DEMOS else "pathology"
        run = sup.find_demo_run(demo_domain)
        if run is None:
            st.sidebar.info(f"No {demo_domain} demo model yet: training it on the synthetic demo corpus takes a few "
                            "minutes on a CPU (it is kept for next time).")
            if st.sidebar.button("Train the demo model", key="train_demo"):
                bar = st.sidebar.progress(0.0, text="starting ...")

                def show(step: int, total: int) -> None:
                    bar.progress(min(step / total, 1.0) if total else 0.0, text=f"training step {step} / {total or '?'}")

                try:
                    sup.train_demo_run(demo_domain, progress=show)
                except MedvlpError as e:
                    st.sidebar.error(f"demo training failed: {e}")
                    return card, None
                st.rerun()
            return card, None
        source = str(run)
    else:
        text = st.sidebar.text_input("Run folder or model id", key="model_source",
                                     placeholder="runs/pathology-demo or hf-hub:ORG/NAME")
        try:
            source = sup.resolve_model_source(text)
        except MedvlpError as e:
            st.sidebar.error(str(e))
            return card, None
    try:
        model = cached_model(source, domain)
    except MedvlpError as e:
        st.sidebar.error(f"could not load the model {source}: {e}")
        return card, None
    meta = getattr(model.net, "meta", {}) or {}
    st.sidebar.caption(f"model: `{source}` ({model.net.spec.name}, objective {meta.get('objective', '?')}, "
                       f"concept head: {'yes' if model.net.concept_head is not None else 'no'})")
    return card, model


def label_editor(card: Any, model: Any, key: str = "labels") -> list[str] | None:
    """Label set choice, an editable list and ontology-backed suggestions. None (with a message) when invalid."""
    sets = list(card.label_sets)
    meta = (getattr(model.net, "meta", None) or {}) if model is not None else {}
    preferred = meta.get("label_set") if meta.get("label_set") in sets else card.default_label_set
    lset = st.selectbox("Label set", sets, index=sets.index(preferred), key=f"{key}_set")
    text = st.text_area("Labels (one per line)", value="\n".join(card.label_set(lset).names),
                        key=f"{key}_{card.name}_{lset}", height=160)
    query = st.text_input("Search the ontology for more labels", key=f"{key}_query")
    extra: list[str] = []
    if query.strip():
        options = sup.label_suggestions(card, query)
        if options:
            extra = st.multiselect("Add labels", options, key=f"{key}_add")
        else:
            st.caption(f"no concept matches '{query}'")
    try:
        labels = sup.parse_labels(text)
        labels += [e for e in extra if e.lower() not in {lab.lower() for lab in labels}]
    except MedvlpError as e:
        st.error(f"Labels: {e}")
        return None
    if len(labels) < 2:
        st.error("Labels: give at least two labels for zero-shot classification")
        return None
    return labels


def read_uploads(files: list[Any], card: Any) -> list[sup.Upload]:
    """Decode uploads, with window controls for DICOM; unreadable ones show a message and are skipped."""
    out: list[sup.Upload] = []
    for f in files:
        data = f.getvalue()
        try:
            up = sup.read_upload(f.name, data, card=card)
            if up.kind == "dicom" and up.value_range is not None and up.window is not None:
                lo, hi = up.value_range
                with st.expander(f"DICOM window and header: {f.name}"):
                    span = max(hi - lo, 1.0)
                    c0 = float(min(max(up.window[0], lo), hi))
                    w0 = float(min(max(up.window[1], 1.0), 2 * span))
                    c = st.slider("Window centre", float(lo), float(hi), c0, key=f"wc_{f.name}")
                    w = st.slider("Window width", 1.0, float(2 * span), w0, key=f"ww_{f.name}")
                    if (c, w) != up.window:
                        up = sup.read_upload(f.name, data, card=card, window=(c, w))
                    st.caption("Header (non-identifying tags only; patient, study and institution tags are never shown)")
                    st.json(up.metadata, expanded=False)
            out.append(up)
        except MedvlpError as e:
            st.error(f"{f.name}: {e}")
    return out
