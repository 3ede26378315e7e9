// kernel_fx report page: sort and filter the sites table, expand every diff of a graph.
// Works on one report root (a page may hold several, e.g. notebook outputs); no network, no globals.
(function (root) {
  "use strict";
  if (!root) { return; }
  var table = root.querySelector("table.sites");
  var body = table ? table.tBodies[0] : null;
  var rows = body ? Array.prototype.slice.call(body.rows) : [];
  var texts = rows.map(function (tr) { return tr.textContent.toLowerCase(); });
  var shown = root.querySelector(".filters .shown");
  var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function value(name) {
    var el = root.querySelector('[data-filter="' + name + '"]');
    return el ? el.value : "";
  }

  function apply() {
    var report = value("report"), outcome = value("outcome"), reason = value("reason");
    var text = value("text").trim().toLowerCase();
    var n = 0;
    rows.forEach(function (tr, i) {
      var d = tr.dataset;
      var ok = (!report || d.report === report) && (!outcome || d.outcome === outcome) &&
        (!reason || (reason === "-" ? d.reason === "" : d.reason === reason)) &&
        (!text || texts[i].indexOf(text) >= 0);
      tr.hidden = !ok;
      if (ok) { n += 1; }
    });
    if (shown) { shown.textContent = n + " of " + rows.length + " rows"; }
  }

  Array.prototype.forEach.call(root.querySelectorAll("[data-filter]"), function (el) {
    el.addEventListener("input", apply);
    el.addEventListener("change", apply);
  });

  // Sorting: a numeric data-sort where the cell has one (errors, timings), else the text with
  // numbers compared as numbers (layers.2 before layers.10); ties keep the current order.
  var ascending = {};
  if (table) {
    Array.prototype.forEach.call(table.querySelectorAll("thead button"), function (button) {
      button.addEventListener("click", function () {
        var col = Number(button.dataset.col);
        var asc = ascending[col] = !ascending[col];
        var keyed = Array.prototype.map.call(body.rows, function (tr, i) {
          var cell = tr.cells[col];
          var key = cell.dataset.sort !== undefined ? parseFloat(cell.dataset.sort) : cell.textContent;
          return { key: key, i: i, tr: tr };
        });
        keyed.sort(function (a, b) {
          var c = typeof a.key === "number" ? a.key - b.key : collator.compare(a.key, b.key);
          return (asc ? c : -c) || a.i - b.i;
        });
        var fragment = document.createDocumentFragment();
        keyed.forEach(function (k) { fragment.appendChild(k.tr); });
        body.appendChild(fragment);
        Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (th) { th.removeAttribute("aria-sort"); });
        button.parentNode.setAttribute("aria-sort", asc ? "ascending" : "descending");
      });
    });
  }

  Array.prototype.forEach.call(root.querySelectorAll("button.expand-all"), function (button) {
    button.addEventListener("click", function () {
      var section = button.closest("section");
      var diffs = section.querySelectorAll("details.diff");
      var open = button.textContent === "expand all";
      Array.prototype.forEach.call(diffs, function (d) { d.open = open; });
      button.textContent = open ? "collapse all" : "expand all";
    });
  });

  apply();
})(document.getElementById("__ROOT_ID__"));
