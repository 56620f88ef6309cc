"""Thin FiftyOne adapters: read params, call one gradcam_engine function, report progress."""

OPERATORS: list = []
PANELS: list = []
