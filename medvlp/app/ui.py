"""Streamlit widgets shared by the two apps: domain and model choice, label editor, uploads.

Imported only by ``apps/*.py`` (it imports Streamlit); the logic they call lives in
:mod:`medvlp.app.support` and :mod:`medvlp.app.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from medvlp.app import support as sup
from medvlp.app.settings import AppSettings, confine, token_ok
from medvlp.errors import MedvlpError


def settings() -> AppSettings:
    """The settings the app was launched with (``medvlp app NAME --token/--data-root/--models/...``)."""
    return AppSettings.from_env()


def require_access(s: AppSettings | None = None) -> AppSettings:
    """With an access token set: nothing but a token prompt until it is given (``?token=`` works too)."""
    s = s or settings()
    if not s.token or st.session_state.get("_medvlp_access"):
        return s
    given = st.query_params.get("token")
    if not token_ok(given, s.token):
        given = st.text_input("Access token", type="password", key="_access_token")
    if given and token_ok(given, s.token):
        st.session_state["_medvlp_access"] = True
        return s
    if given:
        st.error("wrong access token")
    st.info("This app was started with an access token: enter it to continue.")
    st.stop()
    return s


def server_path(label: str, key: str, s: AppSettings | None = None) -> str | None:
    """A text box for a file on the server, shown only when the app was started with ``--data-root``;
    the path is confined to it (an error is shown otherwise). None when empty, off or refused."""
    s = s or settings()
    if not s.paths_allowed:
        return None
    text = st.text_input(f"{label} (under {s.data_root})", key=key)
    if not text.strip():
        return None
    try:
        return str(confine(text, s))
    except MedvlpError as e:
        st.error(str(e))
        return None


@st.cache_resource(show_spinner="Loading the model ...")
def cached_model(source: str, domain: str) -> Any:
    """Load a model once per (source, domain) for the whole server (all sessions share it)."""
    import medvlp

    return medvlp.load(source, domain=domain)


def choose_domain_and_model() -> tuple[Any, Any]:
    """Sidebar: domain, and a model: the demo model, or one of the models the app was started with
    (``--models``); never a path or hub id typed in the page. Returns (card, model or None)."""
    from medvlp.demos.corpora import DEMOS
    from medvlp.domains import list_domains, load_card

    s = settings()
    domains = list_domains()
    domain = st.sidebar.selectbox("Domain", domains, index=domains.index("pathology") if "pathology" in domains else 0,
                                  key="domain")
    card = load_card(domain)
    st.sidebar.caption(card.title)
    modes = ["Demo model"] + (["A model this app was started with"] if s.models else [])
    mode = st.sidebar.radio("Model", modes, key="model_mode")
    if mode == "Demo model":
        demo_domain = domain if domain in DEMOS else "pathology"
        run = sup.find_demo_run(demo_domain)
        if run is None:
            if not s.allow_training:
                st.sidebar.info(f"No {demo_domain} demo model yet. Train one with `medvlp pretrain --domain "
                                f"{demo_domain}` and start the app with `--models RUN_DIR`, or start it with "
                                "`--allow-training` to train the demo model from this page.")
                return card, None
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
        source = st.sidebar.selectbox("Model", list(s.models), key="model_source")
    try:
        model = cached_model(source, domain)
    except MedvlpError as e:
        st.sidebar.error(f"could not load the model {source}: {e}")
        return card, None
    meta = getattr(model.net, "meta", {}) or {}
    st.sidebar.caption(f"model: `{Path(source).name}` ({model.net.spec.name}, objective {meta.get('objective', '?')}, "
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
        uid = sup.upload_id(data)  # file names often hold MRNs or accession numbers: never shown
        try:
            up = sup.read_upload(f.name, data, card=card)
            for w in up.warnings:
                st.warning(f"{uid}: {w}")
            if up.kind == "dicom" and up.value_range is not None and up.window is not None:
                lo, hi = up.value_range
                with st.expander(f"DICOM window and header: {uid}"):
                    span = max(hi - lo, 1.0)
                    c0 = float(min(max(up.window[0], lo), hi))
                    w0 = float(min(max(up.window[1], 1.0), 2 * span))
                    centre = float(st.slider("Window centre", float(lo), float(hi), c0, key=f"wc_{uid}"))
                    width = float(st.slider("Window width", 1.0, float(2 * span), w0, key=f"ww_{uid}"))
                    if (centre, width) != up.window:
                        up = sup.read_upload(f.name, data, card=card, window=(centre, width))
                    st.caption("Header: technical tags only (medvlp.io.dicom.display_tags); no names, ids, dates "
                               "or free-text descriptions")
                    st.json(up.metadata, expanded=False)
            out.append(up)
        except MedvlpError as e:
            st.error(f"{uid}: {e}")
    return out
