"""FiftyOne plugin entry point: registers the CAM-audit operators and panel.

The repository root is the plugin; the library it drives is ``gradcam_engine``.
"""


def register(p):
    # Imported here, not at module level: pytest imports this file as the
    # package of the checkout (named after its folder, e.g. an invalid
    # "fiftyone-cam-audit", where a relative import fails) before the tests'
    # conftest has pointed FiftyOne at its own database.
    from .operators import OPERATORS, PANELS

    _register_admin_sources()
    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)


def _register_admin_sources() -> None:
    """The model sources the deployment names in the plugin's settings
    (``model_sources``: see gradcam_engine/runs/trust.py), so that the App
    lists them. A malformed setting is logged here, not raised: the other
    operators still load, and the model checks raise it where it matters."""
    import logging

    from gradcam_engine.runs import trust

    try:
        trust.register_admin_sources()
    except Exception:
        logging.getLogger(__name__).exception("cam-audit: model_sources setting")
