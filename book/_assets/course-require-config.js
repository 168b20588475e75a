// Loaded after require.js and before the ipywidgets HTML manager (book/_config.yml).
// Each widget module bundled in embed-amd.js finds its fonts (the dropdown caret, the
// icon font) next to its own AMD module URL, which require.js resolves against the page's
// folder (notebooks/@jupyter-widgets/...: 404). Point every module id the bundle defines
// at the copy vendored under _static, wherever the page sits. The modules are defined
// inline by the bundle, so require.js never fetches these URLs: it only names them.
(function () {
  var here = document.currentScript && document.currentScript.src;
  if (!here || typeof require === "undefined" || !require.config) return;
  var vendor = new URL("vendor/html-manager/", here).href;
  var paths = { "@jupyter-widgets/html-manager/dist": vendor.slice(0, -1) };
  ["base", "base7", "controls", "controls7", "html-manager"].forEach(function (m) {
    paths["@jupyter-widgets/" + m] = vendor + m;
  });
  require.config({ paths: paths });
})();

// ipywidgets labels typeset with MathJax 2's API (MathJax.Hub.Queue); the site runs
// MathJax 3, which has no Hub. Give whichever MathJax object the page ends up with a Hub
// that forwards to MathJax 3's typesetPromise (MathJax 3 replaces window.MathJax when it
// starts, so watch the assignment instead of patching once).
(function () {
  function addHub(m) {
    if (m && typeof m === "object" && !m.Hub) {
      m.Hub = {
        Queue: function (job) {
          var el = job && job[2];
          var now = window.MathJax;
          if (el && now && now.typesetPromise) now.typesetPromise([el]).catch(function () {});
        },
      };
    }
    return m;
  }
  var current = addHub(window.MathJax);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      get: function () { return current; },
      set: function (v) { current = addHub(v); },
    });
  } catch (e) { /* already non-configurable: the one-off patch above is all we can do */ }
})();
