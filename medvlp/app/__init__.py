"""The Streamlit apps' support code (``apps/diagnose.py``, ``apps/explain.py``).

:mod:`medvlp.app.settings` (launch flags: host, token, data root, model allow-list, training gate) and
:mod:`medvlp.app.support` (uploads, model choice, result tables) import no Streamlit and are tested directly;
:mod:`medvlp.app.ui` holds the shared widgets.
"""
