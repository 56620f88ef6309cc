"""``python -m gradcam_engine.demo`` (``make demo``): offline demo datasets
(``datasets``), the planted-shortcut generator (``shortcut_data``) and its small
CNN (``shortcut_model``). The demo's images ship as package data in ``data/``."""
