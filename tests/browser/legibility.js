// The course's one legibility check for a drawn plotly figure (issue #17), shared by
// scripts/figure_check.py (one notebook's figures) and tests/browser/test_legibility.py
// (every figure of every page of the built book). Evaluate it with the figure's
// .plotly-graph-div as the first argument:
//
//     locator.evaluate(source_of_this_file, {tol: 2, column: 358})
//
// It collects every visible SVG text of the figure (titles, subplot titles and other
// annotations, axis titles, tick labels, legend entries, slider labels and current value,
// buttons, colour-bar ticks, table cells, in-plot text) as the quadrilateral the text
// occupies on screen (rotated labels stay rotated: getBBox corners through getScreenCTM),
// and reports
//   clipped:  a text that leaves the figure's drawing (the main <svg>) or the clip region
//             it is drawn in (a table cell cut by its table, in-plot text cut by the axes),
//             by more than `tol` px;
//   overlaps: two different texts whose shapes intersect by more than `tol` px (the depth
//             of the overlap along the axis that separates them best);
//   overflow: the figure is wider than the `column` it must fit in (when one is given);
//   covered:  the figure's drawing is taller than the box that holds it, so what follows
//             on the page is drawn over its bottom (a fixed-height wrapper not resized).
// Texts are named by their content (first 60 characters) and their role (plotly's class).
(gd, opts) => {
  const tol = (opts && opts.tol) || 2;
  const column = opts && opts.column;
  const svg = gd.querySelector("svg.main-svg");
  if (!svg) return { error: "figure not drawn (no svg.main-svg)", texts: 0, clipped: [], overlaps: [], overflow: null };
  // every drawing layer of the figure: plotly stacks several svg.main-svg (plot, info layer)
  const frame = svg.getBoundingClientRect();

  const ROLES = [
    [/^g-gtitle$/, "title"], [/^g-x\d*title$/, "x title"], [/^g-y\d*title$/, "y title"],
    [/^annotation$/, "annotation"], [/^x\d*tick$/, "x tick"], [/^y\d*tick$/, "y tick"],
    [/^legendtitletext$/, "legend title"], [/^legendtext$/, "legend"], [/^slider-label$/, "slider label"],
    [/^slider-current-value$/, "slider value"], [/^updatemenu/, "button"], [/^(colorbar|cbaxis)/, "colour bar"],
    [/^table/, "table cell"], [/^textpoint$/, "point label"],
  ];
  function role(el) {
    for (let a = el; a && a !== gd; a = a.parentElement) {
      const classes = ((a.getAttribute && a.getAttribute("class")) || "").split(/\s+/);
      for (const [re, name] of ROLES) if (classes.some((c) => re.test(c))) return name;
    }
    return el.getAttribute("class") || "text";
  }
  function quad(el) {
    const b = el.getBBox();
    const m = el.getScreenCTM();
    if (!m || b.width <= 0 || b.height <= 0) return null;
    return [
      [b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height],
    ].map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  }
  function box(q) {
    const xs = q.map((p) => p[0]), ys = q.map((p) => p[1]);
    return { left: Math.min(...xs), right: Math.max(...xs), top: Math.min(...ys), bottom: Math.max(...ys) };
  }
  // smallest penetration depth of two convex quadrilaterals over the separating-axis candidates
  function depth(p, q) {
    let best = Infinity;
    for (const poly of [p, q]) {
      for (let i = 0; i < 4; i++) {
        const [x1, y1] = poly[i], [x2, y2] = poly[(i + 1) % 4];
        let nx = y1 - y2, ny = x2 - x1;
        const len = Math.hypot(nx, ny);
        if (!len) continue;
        nx /= len; ny /= len;
        const pr = p.map(([x, y]) => x * nx + y * ny), qr = q.map(([x, y]) => x * nx + y * ny);
        const d = Math.min(Math.max(...pr), Math.max(...qr)) - Math.max(Math.min(...pr), Math.min(...qr));
        if (d <= 0) return 0;
        best = Math.min(best, d);
      }
    }
    return best;
  }
  function clipBox(el) {
    // the innermost clip-path an ancestor applies (plotly: tables, plot areas, legends)
    for (let a = el; a && a !== gd; a = a.parentElement) {
      const cp = a.getAttribute && a.getAttribute("clip-path");
      const id = cp && (cp.match(/url\(["']?#([^"')]+)["']?\)/) || [])[1];
      if (!id) continue;
      const clip = gd.ownerDocument.getElementById(id);
      const shape = clip && clip.querySelector("rect, path");
      if (!shape) continue;
      // clipPathUnits="userSpaceOnUse": the shape lives in the coordinates of the element
      // that references it
      const m = a.getScreenCTM && a.getScreenCTM();
      const r = shape.getBBox();
      if (!m || r.width <= 0 || r.height <= 0) continue;
      return box([[r.x, r.y], [r.x + r.width, r.y], [r.x + r.width, r.y + r.height], [r.x, r.y + r.height]]
        .map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]));
    }
    return null;
  }
  const name = (t) => `${t.role} "${t.text}"`;

  const texts = [];
  for (const el of gd.querySelectorAll("svg text")) {
    if (el.closest(".hoverlayer")) continue;
    // a wrapped title is one <text> with a <tspan class="line"> per line: keep the spaces
    const lines = el.querySelectorAll("tspan.line");
    const raw = lines.length ? [...lines].map((l) => l.textContent).join(" ") : el.textContent;
    const text = (raw || "").replace(/\s+/g, " ").trim();
    if (!text) continue;
    if (el.checkVisibility && !el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    const op = parseFloat(getComputedStyle(el).fillOpacity || "1");
    if (op === 0) continue;
    const q = quad(el);
    if (!q) continue;
    texts.push({ el, text: text.slice(0, 60), role: role(el), q, b: box(q) });
  }

  const clipped = [];
  for (const t of texts) {
    const out = [];
    const f = frame;
    if (t.b.left < f.left - tol) out.push(`left by ${Math.round(f.left - t.b.left)} px`);
    if (t.b.right > f.right + tol) out.push(`right by ${Math.round(t.b.right - f.right)} px`);
    if (t.b.top < f.top - tol) out.push(`top by ${Math.round(f.top - t.b.top)} px`);
    if (t.b.bottom > f.bottom + tol) out.push(`bottom by ${Math.round(t.b.bottom - f.bottom)} px`);
    if (out.length) {
      clipped.push({ text: t.text, role: t.role, how: `leaves the figure at the ${out.join(", ")}` });
      continue;
    }
    const c = clipBox(t.el);
    if (c) {
      const cut = [];
      if (t.b.left < c.left - tol) cut.push("left");
      if (t.b.right > c.right + tol) cut.push("right");
      if (t.b.top < c.top - tol) cut.push("top");
      if (t.b.bottom > c.bottom + tol) cut.push("bottom");
      if (cut.length) {
        const hidden = t.b.right < c.left || t.b.left > c.right || t.b.bottom < c.top || t.b.top > c.bottom;
        clipped.push({ text: t.text, role: t.role, how: hidden ? "hidden outside its panel" : `cut by its panel at the ${cut.join(", ")}` });
      }
    }
  }

  const overlaps = [];
  for (let i = 0; i < texts.length; i++) {
    const a = texts[i];
    for (let j = i + 1; j < texts.length; j++) {
      const b = texts[j];
      if (a.el === b.el || a.el.contains(b.el) || b.el.contains(a.el)) continue;
      if (a.b.right <= b.b.left || b.b.right <= a.b.left || a.b.bottom <= b.b.top || b.b.bottom <= a.b.top) continue;
      const d = depth(a.q, b.q);
      if (d > tol) overlaps.push({ a: name(a), b: name(b), depth: Math.round(d) });
    }
  }

  const width = Math.round(frame.width);
  const overflow = column && width > column + 1 ? { width, column } : null;
  const holder = gd.parentElement && gd.parentElement.getBoundingClientRect();
  const covered = holder && holder.height > 0 && frame.height > holder.height + tol
    ? { height: Math.round(frame.height), box: Math.round(holder.height) } : null;
  return { texts: texts.length, fig_width: width, fig_height: Math.round(frame.height), clipped, overlaps, overflow, covered };
}
