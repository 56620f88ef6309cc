/*
 * `open_cam_sample`: open a sample in the App's sample view with exactly the
 * given fields switched on (the review panel's Open). `apply_cam_look`: the
 * session takes the dataset's colour scheme (after a run, see below).
 *
 * FiftyOne keeps one set of active fields for the grid and another for the
 * sample view, and no Python operator can set the sample view's: the built-in
 * `set_active_fields` always sets the grid's, and `open_sample` opens the
 * sample with whatever was ticked there before. This operator does what a
 * click on a grid tile does (copy the grid's filters and colour settings into
 * the sample view), then sets the sample view's fields and opens the sample,
 * in that order, in the browser: no settle delay, no race with the grid.
 *
 * A plain script, not a build: the App loads a plugin's bundle with a
 * <script> tag and exposes its operator, state and Recoil modules as globals
 * (`window.__foo__`, `window.__fos__`, `window.recoil`), which is all this
 * needs. See docs/ARCHITECTURE.md.
 */
(function () {
  "use strict";
  var PLUGIN = "@cam-audit/cam-audit";
  var foo = window.__foo__;
  var fos = window.__fos__;
  var recoil = window.recoil;
  if (!foo || !fos || !recoil) {
    console.error(PLUGIN + ": the App exposes no operator/state modules");
    return;
  }

  class OpenCamSample extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "open_cam_sample",
        label: "Open a sample with the given fields",
        unlisted: true,
      });
    }

    useHooks() {
      return {
        copyGridState: fos.useSetModalState(),
        updateSamples: fos.useUpdateSamples(),
        refetchCounts: recoil.useRecoilCallback(
          function (cb) {
            return function () {
              cb.set(fos.refresher, function (n) {
                return n + 1;
              });
            };
          },
          []
        ),
        countsLoaded: recoil.useRecoilCallback(
          function (cb) {
            return function (path) {
              return cb.snapshot.getPromise(
                fos.count({ path: path, modal: true, extended: false })
              );
            };
          },
          []
        ),
        openSample: fos.useSetExpandedSample(),
        setSampleViewFields: recoil.useRecoilCallback(
          function (cb) {
            return function (fields) {
              cb.set(fos.activeFields({ modal: true }), fields);
            };
          },
          []
        ),
      };
    }

    async execute(ctx) {
      var params = ctx.params || {};
      if (!params.sample_id) {
        return;
      }
      await ctx.hooks.copyGridState();
      var fresh = params.sample && typeof params.sample === "object";
      if (fresh) {
        // The sidebar's counts are the App's aggregations, cached by the
        // `refresher` index (their only reader): a field written since read
        // 0 until it moved (FiftyOne's useRefreshSample moves it too). Moved
        // and refetched before the sample view redraws: a sidebar refetch
        // while the looker decodes the new map detaches its buffer
        // ("Cannot perform Construct on a detached ArrayBuffer").
        ctx.hooks.refetchCounts();
        if (Array.isArray(params.fields) && params.fields.length) {
          try {
            await ctx.hooks.countsLoaded(params.fields[0]);
          } catch (e) {
            // the counts are a courtesy: the map is drawn without them
          }
        }
      }
      // The fields first, the sample last: an open sample view redraws on
      // each, and only the redraw with the new sample decodes the new map.
      // Fields after the sample made a second redraw while that map decoded
      // (the same detached-buffer error, docs/ARCHITECTURE.md).
      if (Array.isArray(params.fields)) {
        ctx.hooks.setSampleViewFields(params.fields);
      }
      // A sample the App has cached (e.g. open in the sample view) is drawn
      // from its cache, without a field written since: the caller passes the
      // sample as the server serves it, and the cache takes it (what the App
      // does after tagging a sample).
      if (fresh) {
        ctx.hooks.updateSamples([[params.sample_id, params.sample]]);
      }
      // The panel's button keeps the keyboard focus, and the App's sample
      // view ignores keys typed into a form control: Escape (close) and the
      // arrows would do nothing. A click on a tile leaves no focus either.
      if (document.activeElement && document.activeElement.blur) {
        document.activeElement.blur();
      }
      ctx.hooks.openSample({ id: params.sample_id });
    }
  }

  /*
   * `apply_cam_look`: make the open session use the dataset's colour scheme
   * and sidebar groups now (a run just stored them in `dataset.app_config`). The App
   * reads a dataset's scheme into the session only when the dataset is
   * loaded, and `reload_dataset` does not; a browser reload keeps the
   * session's old scheme too. Setting the session's scheme as the App's own
   * colour settings do also stores it on the server's session.
   */
  class ApplyCamLook extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "apply_cam_look",
        label: "Apply a CAM run's colour scheme to the session",
        unlisted: true,
      });
    }

    useHooks() {
      return {
        reloadDataset: fos.useRefresh(),
        setSessionColorScheme: fos.useSetSessionColorScheme(),
        sessionColorScheme: recoil.useRecoilCallback(
          function (cb) {
            return function () {
              return cb.snapshot.getLoadable(fos.colorScheme).contents;
            };
          },
          []
        ),
        setSidebarGroups: recoil.useRecoilCallback(
          function (cb) {
            return function (groups) {
              cb.set(fos.sidebarGroupsDefinition(false), groups);
            };
          },
          []
        ),
      };
    }

    async execute(ctx) {
      var params = ctx.params || {};
      var scheme = params.color_scheme;
      if (scheme && !sameLook(ctx.hooks.sessionColorScheme(), scheme)) {
        ctx.hooks.setSessionColorScheme(fos.ensureColorScheme(scheme));
      }
      // The grid's sidebar keeps the groups it resolved when the dataset was
      // opened (the dataset's groups only count when it has none yet).
      if (Array.isArray(params.sidebar_groups) && params.sidebar_groups.length) {
        ctx.hooks.setSidebarGroups(params.sidebar_groups);
      }
      // The new fields, in the same turn (what the built-in reload_dataset
      // does): one redraw of the tiles instead of one per change. Redraws in
      // quick succession, while heatmaps decode, make FiftyOne's looker
      // raise DataCloneError (docs/ARCHITECTURE.md).
      ctx.hooks.reloadDataset();
    }
  }

  /*
   * Whether the session already draws what `scheme` asks for: same colour
   * mode and opacity, and every colorscale of `scheme` either set in the
   * session or the session's default one (a new run's fields get viridis,
   * the App's default). Setting an equal scheme would only redraw every tile.
   */
  function sameLook(current, scheme) {
    if (!current || typeof current !== "object") {
      return false;
    }
    if ((scheme.colorBy || "field") !== current.colorBy) {
      return false;
    }
    if (typeof scheme.opacity === "number" && scheme.opacity !== current.opacity) {
      return false;
    }
    var fallback = (current.defaultColorscale || {}).name || "viridis";
    var known = {};
    (current.colorscales || []).forEach(function (c) {
      known[c.path] = c.name;
    });
    return (scheme.colorscales || []).every(function (c) {
      return known[c.path] === c.name || (!c.list && c.name === fallback);
    });
  }

  foo.registerOperator(OpenCamSample, PLUGIN);
  foo.registerOperator(ApplyCamLook, PLUGIN);
})();
