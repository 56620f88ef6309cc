"""The repository loads as a FiftyOne plugin from FIFTYONE_PLUGINS_DIR."""

import fiftyone.operators as foo
import fiftyone.plugins as fop
import yaml
from conftest import ROOT

PLUGIN = "@cam-audit/cam-audit"


def _manifest():
    return yaml.safe_load((ROOT / "fiftyone.yml").read_text())


def test_plugin_is_discovered():
    names = [p.name for p in fop.list_plugins()]
    assert PLUGIN in names


def test_plugin_registers_every_declared_operator_and_panel():
    manifest = _manifest()
    assert manifest["name"] == PLUGIN
    uris = {op.uri for op in foo.list_operators(enabled=True, builtin=False)}
    for name in manifest["operators"] + manifest["panels"]:
        assert f"{PLUGIN}/{name}" in uris, (
            f"{name} is in fiftyone.yml but not registered"
        )
    ours = {u for u in uris if u.startswith(PLUGIN + "/")}
    declared = {f"{PLUGIN}/{n}" for n in manifest["operators"] + manifest["panels"]}
    assert ours == declared


def test_plugin_has_no_load_errors():
    from fiftyone.plugins.context import build_plugin_contexts

    contexts = [c for c in build_plugin_contexts() if c.name == PLUGIN]
    assert contexts, "plugin context not built"
    assert not contexts[0].has_errors(), "\n".join(contexts[0].errors)


def test_operators_are_callable_from_python():
    for name in ("compute_cams", "score_cams", "list_cam_runs", "rename_cam_run"):
        op = foo.get_operator(f"{PLUGIN}/{name}")
        assert callable(op)
        assert op.config.name == name
    compute = foo.get_operator(f"{PLUGIN}/compute_cams")
    assert compute.config.allow_delegated_execution
    assert compute.config.allow_immediate_execution


def test_browser_side_open_is_served_under_the_plugins_name():
    """The panel's Open triggers ``open_cam_sample`` from js/open_cam_sample.js
    (what it does in the App: tests/test_app_browser.py)."""
    (plugin,) = [p for p in fop.list_plugins() if p.name == PLUGIN]
    assert plugin.has_js and plugin.js_bundle == _manifest()["js_bundle"]
    script = (ROOT / plugin.js_bundle).read_text()
    assert f'var PLUGIN = "{PLUGIN}";' in script
    assert 'name: "open_cam_sample"' in script
    panel = (ROOT / "operators" / "review_panel.py").read_text()
    assert '_forms.uri("open_cam_sample")' in panel
