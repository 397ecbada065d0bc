/* featstore report: draws the pages' Plotly figures, sorts tables, shows the map's images. No network, no eval of data:
   figures and points are JSON blocks (<script type="application/json">) parsed with JSON.parse; text goes in with
   textContent, never as markup. */
(function () {
  "use strict";
  var root = document.body.getAttribute("data-root") || "";

  function json(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function hookMap(div, points) {
    var panel = document.getElementById("map-panel");
    if (!panel || !points) return;
    var img = panel.querySelector("img"), caption = panel.querySelector(".caption"), link = panel.querySelector("a");
    function point(ev) { return ev && ev.points && ev.points.length ? points[ev.points[0].customdata] : null; }
    div.on("plotly_hover", function (ev) {
      var p = point(ev);
      if (!p) return;
      img.src = root + p[0];
      img.alt = p[1];
      img.hidden = false;
      caption.textContent = p[1] + " · " + p[2] + " · " + p[3] + (p[5] ? " · no image: " + p[5] : "");
      if (p[4]) { link.href = p[4]; link.hidden = false; } else { link.hidden = true; }
    });
    div.on("plotly_click", function (ev) {
      var p = point(ev);
      if (p && p[4]) window.open(p[4], "_blank", "noopener");
    });
  }

  document.querySelectorAll("div.plot[data-figure]").forEach(function (div) {
    var fig = json(div.getAttribute("data-figure"));
    if (!fig || !window.Plotly) return;
    window.Plotly.newPlot(div, fig.data, fig.layout, { responsive: true, displaylogo: false }).then(function () {
      if (div.id === "map") hookMap(div, json("map-points"));
      div.setAttribute("data-drawn", "yes");
    });
  });

  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) v = cell.textContent.trim();
    var n = parseFloat(v);
    return isNaN(n) || String(n) !== String(parseFloat(v)) || !/^-?[0-9.e+-]+$/i.test(v) ? v.toLowerCase() : n;
  }

  function sortBy(table, col, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var down = th.getAttribute("aria-sort") === "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", down ? "descending" : "ascending");
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return down ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, col, th); });
    });
  });
})();
