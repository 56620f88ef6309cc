"""FiftyOne plugin entry point: registers the CAM-audit operators and panel.

The repository root is the plugin; the library it drives is ``gradcam_engine``.
"""


def register(p):
    # Imported here, not at module level: pytest imports this file as the
    # package of the checkout (named after its folder, e.g. an invalid
    # "fiftyone-cam-audit", where a relative import fails) before the tests'
    # conftest has pointed FiftyOne at its own database.
    from .operators import OPERATORS, PANELS

    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)
