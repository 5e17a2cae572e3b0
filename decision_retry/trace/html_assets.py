"""Inline CSS and JavaScript of the HTML report (kept apart so report.py reads as markup)."""

CSS = """
:root { font-family: system-ui, sans-serif; color: #1d1d1f; background: #fafafa; }
body { margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem 6rem; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; } h3 { font-size: 1rem; }
code, pre, .tokens {
  font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
#branch-tree ul { list-style: none; padding-left: 0; margin: 0; }
.branch-node { margin: .25rem 0; font-size: .85rem; }
.branch-node > span:not(.branch-label):not(.fix-mark)::before { content: "· "; color: #999; }
.branch-node.collapsed > .branch-label { border-style: dashed; }
.fix-mark { margin-left: .4rem; padding: 0 .35rem; border-radius: 3px; background: #2e7d32;
  color: #fff; font-size: .75rem; }
#settings { font-size: .85rem; }
.fix-diff { background: #fff; border: 1px solid #ddd; padding: .5rem; white-space: pre-wrap;
  word-break: break-all; }
.fix-diff .add { color: #1b5e20; background: #e8f5e9; }
.fix-diff .del { color: #b71c1c; background: #ffebee; }
.fix-diff .hunk { color: #00838f; }
#signal-toggle label { margin-right: .8rem; cursor: pointer; }
.branch-label { display: inline-block; padding: .15rem .5rem; border-radius: 4px;
  border: 1px solid #bbb; background: #fff; cursor: pointer; }
.branch-node[data-passed="true"] > .branch-label { border-color: #2e7d32; background: #e8f5e9; }
.branch-node[data-passed="false"] > .branch-label { border-color: #c62828; background: #ffebee; }
.branch-node.selected > .branch-label { outline: 2px solid #1565c0; }
.cut-info, .change-info, .mh-info, .test-info { color: #555; margin-left: .4rem; }
#entropy-plot { width: 100%; height: 260px; background: #fff; border: 1px solid #ddd; }
#entropy-plot .entropy-line { fill: none; stroke-width: 1.2; opacity: .85; }
#entropy-plot .entropy-line.dim { opacity: .15; }
#entropy-plot .decision-dot { stroke: #000; stroke-width: .6; }
#entropy-plot .cut-line { stroke-dasharray: 4 3; stroke-width: 1; }
#entropy-plot .axis { stroke: #888; stroke-width: 1; }
#entropy-plot text { font-size: 10px; fill: #555; }
.legend { display: flex; gap: 1rem; flex-wrap: wrap; font-size: .85rem; margin: .4rem 0; }
.legend .swatch { display: inline-block; width: 12px; height: 3px; vertical-align: middle;
  margin-right: 4px; }
.heat-scale { display: inline-block; width: 160px; height: 10px; vertical-align: middle;
  background: linear-gradient(to right, hsl(50,100%,95%), hsl(25,100%,75%), hsl(0,100%,55%)); }
.turn { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem;
  margin: .6rem 0; }
.turn-head { font-size: .85rem; color: #555; margin-bottom: .3rem; }
details pre { white-space: pre-wrap; word-break: break-all; }
.tokens { white-space: pre-wrap; word-break: break-word; line-height: 1.6; margin: 0; }
.token { border-radius: 2px; cursor: default; background: var(--h); }
body[data-signal="surprise"] .token { background: var(--s); }
.token.fix-change { box-shadow: 0 0 0 2px #2e7d32; }
.token.kept { opacity: .45; }
.token.cut-point { box-shadow: -2px 0 0 #1565c0; }
.token.decision { outline: 1.5px solid #6a1b9a; outline-offset: 0; font-weight: 600; }
.token.decision-tool { outline-color: #00838f; }
.token:hover { outline: 2px solid #000; }
.tool-call, .test-run { font-size: .85rem; margin: .3rem 0; }
.test-run.pass { color: #2e7d32; } .test-run.fail { color: #c62828; }
table { border-collapse: collapse; font-size: .85rem; }
td, th { padding: .2rem .5rem; border-bottom: 1px solid #eee; text-align: left; }
tr.mh-step.accepted td:last-child { color: #2e7d32; }
tr.mh-step.rejected td:last-child { color: #c62828; }
#token-detail { position: fixed; right: 1rem; bottom: 1rem; width: 300px; background: #fff;
  border: 1px solid #999; border-radius: 6px; padding: .5rem .7rem; font-size: .8rem;
  box-shadow: 0 2px 8px rgba(0,0,0,.15); }
#token-detail[hidden] { display: none; }
.branch-turns.hidden { display: none; }
.branch-turns.repeat > details > summary { color: #555; font-size: .9rem; cursor: pointer; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("trace-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var colors = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00",
                "#6a1b9a", "#00838f", "#ad1457", "#4e342e"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  // 1) the signal-over-position plot: one line per branch, decision dots, cut lines
  function drawPlot() {
    var svg = document.getElementById("entropy-plot");
    var signal = document.body.dataset.signal;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    document.getElementById("plot-legend").textContent = "";
    var W = 1000, H = 260, L = 40, R = 10, T = 10, B = 24;
    var maxLen = 1, maxH = data.max[signal];
    data.branches.forEach(function (b) { maxLen = Math.max(maxLen, b.entropy.length); });
    var sx = function (i) { return L + (W - L - R) * i / Math.max(1, maxLen - 1); };
    var sy = function (h) { return H - B - (H - T - B) * h / maxH; };
    el("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}, svg);
    el("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}, svg);
    [0, maxH / 2, maxH].forEach(function (h) {
      var t = el("text", {x: 4, y: sy(h) + 3}, svg); t.textContent = h.toFixed(1);
    });
    var xl = el("text", {x: W - R - 120, y: H - 6}, svg); xl.textContent = "token position";
    var yl = el("text", {x: L + 4, y: T + 8}, svg); yl.textContent = signal + " (nats)";
    data.branches.forEach(function (b, n) {
      var color = colors[n % colors.length];
      if (b.cut !== null) {
        el("line", {class: "cut-line", x1: sx(b.cut), y1: T, x2: sx(b.cut), y2: H - B,
                    stroke: color, "data-branch": b.id}, svg);
      }
      var values = b[signal].map(function (v) { return v === null ? 0 : Math.min(v, maxH); });
      if (values.length) {
        var d = values.map(function (h, i) {
          return (i ? "L" : "M") + sx(i).toFixed(1) + " " + sy(h).toFixed(1);
        }).join(" ");
        el("path", {class: "entropy-line", d: d, stroke: color, "data-branch": b.id}, svg);
      }
      b.decisions.forEach(function (i) {
        var dot = el("circle", {class: "decision-dot", cx: sx(i), cy: sy(values[i]), r: 3,
                                fill: color, "data-branch": b.id}, svg);
        var title = el("title", {}, dot);
        title.textContent = "attempt #" + b.index + ", position " + i +
          ", " + signal + " " + values[i].toFixed(2);
      });
      var item = document.createElement("span");
      item.innerHTML = '<span class="swatch"></span>';
      item.firstChild.style.background = color;
      item.appendChild(document.createTextNode("#" + b.index));
      document.getElementById("plot-legend").appendChild(item);
    });
  }

  // 2) select a branch: highlight its line, show only its turns
  function select(id) {
    var ids = id === null ? [] : document.getElementById("branch-" + id).dataset.branches
      .split(" ");
    var shown = function (b) { return id === null || ids.indexOf(b) >= 0; };
    document.querySelectorAll(".branch-node").forEach(function (node) {
      node.classList.toggle("selected", node.dataset.branch === id);
    });
    document.querySelectorAll("#entropy-plot .entropy-line").forEach(function (p) {
      p.classList.toggle("dim", !shown(p.dataset.branch));
    });
    document.querySelectorAll(".branch-turns").forEach(function (s) {
      s.classList.toggle("hidden", !shown(s.dataset.branch));
    });
  }

  // 3) token details on hover; model text only ever goes in as textContent
  function line(parent, tag, text) {
    var node = document.createElement(tag);
    node.textContent = text;
    parent.appendChild(node);
    return node;
  }

  function detail(token) {
    var box = document.getElementById("token-detail");
    var d = token.dataset;
    box.textContent = "";
    line(box, "div", "position " + d.pos + "  H=" + (+d.h).toFixed(3) +
         (d.s !== undefined ? "  surprise=" + (+d.s).toFixed(3) : "") +
         "  logp=" + (+d.logp).toFixed(3) + "  logq=" + (+d.logq).toFixed(3));
    if (d.decision) line(box, "div", "decision: " + d.decision);
    var table = line(box, "table", "");
    JSON.parse(d.alts || "[]").forEach(function (a) {
      var row = line(table, "tr", "");
      line(line(row, "td", ""), "code", JSON.stringify(a[0]));
      line(row, "td", (100 * a[1]).toFixed(1) + "%");
    });
    box.hidden = false;
  }

  drawPlot();
  document.querySelectorAll("#signal-toggle input").forEach(function (radio) {
    radio.addEventListener("change", function () {
      document.body.dataset.signal = radio.value;
      document.querySelectorAll(".signal-name").forEach(function (n) {
        n.textContent = radio.value;
      });
      document.querySelectorAll(".scale-top").forEach(function (n) {
        n.textContent = data.max[radio.value].toFixed(1);
      });
      drawPlot();
      select(null);
    });
  });
  document.querySelectorAll(".branch-label").forEach(function (label) {
    label.addEventListener("click", function () {
      var node = label.parentNode;
      select(node.classList.contains("selected") ? null : node.dataset.branch);
    });
  });
  document.querySelectorAll(".token").forEach(function (t) {
    t.addEventListener("mouseenter", function () { detail(t); });
  });
  document.documentElement.setAttribute("data-rendered", "true");
})();
"""
