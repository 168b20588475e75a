// Search result snippets without raw TeX delimiters (issue #17).
// Sphinx's search builds each snippet from the *source* HTML of the page it found, where
// inline math is still "\(x_t\)" (MathJax typesets it only on the page itself). Wrap
// Search.htmlToText so the snippet shows the formula's text, with the commonest TeX
// commands as their Unicode characters. Loaded on every page (book/_config.yml); does
// nothing where searchtools.js is absent.
(function () {
  var SYMBOLS = {
    times: "×", cdot: "·", approx: "≈", le: "≤", leq: "≤", ge: "≥", geq: "≥", ne: "≠", neq: "≠",
    to: "→", rightarrow: "→", leftarrow: "←", infty: "∞", sum: "Σ", prod: "Π", sqrt: "√",
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", eta: "η", theta: "θ",
    lambda: "λ", mu: "μ", pi: "π", rho: "ρ", sigma: "σ", tau: "τ", phi: "φ", omega: "ω",
    Delta: "Δ", Sigma: "Σ", ldots: "…", dots: "…", cdots: "⋯", in: "∈", pm: "±",
  };
  function untex(tex) {
    return tex
      .replace(/\\(?:mathrm|text|mathbf|mathit|operatorname|boldsymbol)\s*\{([^{}]*)\}/g, "$1")
      .replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)")
      .replace(/\\([A-Za-z]+)/g, function (m, name) { return name in SYMBOLS ? SYMBOLS[name] : name; })
      .replace(/\\[,;:! ]/g, " ")
      .replace(/[{}]/g, "");
  }
  function plain(text) {
    return text
      .replace(/\\\(([\s\S]*?)\\\)/g, function (m, tex) { return untex(tex); })
      .replace(/\\\[([\s\S]*?)\\\]/g, function (m, tex) { return untex(tex); })
      .replace(/\$\$([\s\S]*?)\$\$/g, function (m, tex) { return untex(tex); });
  }
  window.courseSearchPlain = plain; // for the browser test
  function install() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search.htmlToText.coursePlain) return;
    var original = Search.htmlToText;
    Search.htmlToText = function (htmlString, anchor) { return plain(original(htmlString, anchor)); };
    Search.htmlToText.coursePlain = true;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", install);
  else install();
})();
