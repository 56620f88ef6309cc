"""FiftyOne plugin entry point: registers the CAM-audit operators and panel.

The repository root is the plugin; the library it drives is ``gradcam_engine``.
"""

from .operators import OPERATORS, PANELS


def register(p):
    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)
