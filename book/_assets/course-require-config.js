// Loaded after require.js and before the ipywidgets HTML manager (book/_config.yml).
// The manager finds its fonts next to its own AMD module URL, which require.js resolves
// against the page's folder (notebooks/@jupyter-widgets/...: 404). Point that module id
// at the copy vendored under _static, wherever the page sits.
(function () {
  var here = document.currentScript && document.currentScript.src;
  if (!here || typeof require === "undefined" || !require.config) return;
  require.config({
    paths: { "@jupyter-widgets/html-manager/dist": new URL("vendor/html-manager", here).href },
  });
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
