/* vlm-circuits explorer: client-side callbacks and cytoscape tuning (served locally by Dash). */
(function () {
  "use strict";
  var GRAPH_ID = "attribution-graph";
  var SUBGRAPH_ID = "subgraph-graph";

  /* dash-cytoscape passes its default wheelSensitivity (1, cytoscape's own default) explicitly,
     and cytoscape warns about a "custom" wheel sensitivity for any value passed: drop exactly
     that message (zooming is gentle without it, see gentleWheel). */
  var consoleWarn = console.warn;
  console.warn = function (first) {
    if (typeof first === "string" && first.indexOf("You have set a custom wheel sensitivity") === 0) { return; }
    return consoleWarn.apply(console, arguments);
  };
  var lastSignature = null;

  /* Edges on demand: the server sends the view's edges as a list; the edges of the hovered and
     the selected node (and of the region circuit) are added to cytoscape as "ondemand" edges,
     everything else is faded. Drawing tens of edges instead of thousands keeps hover and click
     instant. In all-edges mode the edges are already drawn: the same classes highlight them. */
  var demand = {payload: null, edges: [], byNode: {}, all: false, hovered: null, selected: null, region: null};
  var refreshing = false, pending = false;

  function idSelector(key) {
    return "#" + key;  // node keys are [A-Za-z0-9_] only (app/view/keys.py)
  }

  function cyOf(id) {
    var el = document.getElementById(id);
    return el && el._cyreg && el._cyreg.cy;
  }

  function setEdges(payload) {
    demand.edges = (payload && payload.edges) || [];
    demand.all = !!(payload && payload.all);
    demand.byNode = {};
    demand.edges.forEach(function (e, i) {
      (demand.byNode[e[0]] = demand.byNode[e[0]] || []).push(i);
      (demand.byNode[e[1]] = demand.byNode[e[1]] || []).push(i);
    });
  }

  /* on-demand edges have ids of their own: the server may later send the same edge (pinned
     nodes, all-edges mode), and cytoscape refuses a second element with one id */
  function edgeElement(e, classes) {
    return {group: "edges", classes: classes,
            data: {id: "od_" + e[0] + "__" + e[1], source: e[0], target: e[1], weight: e[2], width: e[3],
                   color: e[2] >= 0 ? "#2f6fbf" : "#d0453a"}};
  }

  function refresh() {
    var cy = cyOf(GRAPH_ID);
    if (!cy) { return; }
    refreshing = true;
    try {
      cy.batch(function () {
        cy.remove(cy.edges(".ondemand"));
        cy.elements(".faded, .nbr, .focus, .focus-edge").removeClass("faded nbr focus focus-edge");
        var focus = [demand.hovered, demand.selected].filter(function (k, i, a) {
          return k && a.indexOf(k) === i && cy.getElementById(k).nonempty();
        });
        var add = [], seen = {};
        var want = function (e, classes) {
          var id = e[0] + "__" + e[1];
          if (seen[id]) { return; }
          seen[id] = true;
          var drawn = cy.getElementById(id);
          if (drawn.nonempty()) { drawn.addClass("focus-edge"); return; }
          if (cy.getElementById(e[0]).nonempty() && cy.getElementById(e[1]).nonempty()) {
            add.push(edgeElement(e, classes));
          }
        };
        focus.forEach(function (key) {
          var node = cy.getElementById(key);
          node.addClass("focus");
          if (demand.all) { node.connectedEdges().addClass("focus-edge"); return; }
          (demand.byNode[key] || []).forEach(function (i) { want(demand.edges[i], "ondemand focus-edge"); });
        });
        var region = demand.region;
        if (!demand.all && region && region.nodes && region.nodes.length) {
          var inRegion = {}, from = {};
          region.nodes.forEach(function (k) { inRegion[k] = true; });
          (region.edges_from || []).forEach(function (k) { from[k] = true; });
          demand.edges.forEach(function (e) { if (from[e[0]] && inRegion[e[1]]) { want(e, "ondemand"); } });
        }
        if (add.length) { cy.add(add); }
        if (focus.length) {
          var lit = cy.edges(".focus-edge");
          lit.connectedNodes().addClass("nbr");
          cy.elements().not(".focus, .nbr, .focus-edge").not('node[kind = "axis"], node[kind = "block"]').addClass("faded");
        }
      });
    } finally {
      refreshing = false;
    }
  }

  function scheduleRefresh() {
    if (pending) { return; }
    pending = true;
    setTimeout(function () { pending = false; refresh(); }, 0);
  }

  /* The node the details show, from what triggered the selection callback (see
     app/callbacks/selection.py). */
  function pickNode(tap, selectedNodes, current) {
    var ctx = window.dash_clientside.callback_context;
    var trig = (ctx && ctx.triggered) || [];
    var ids = trig.map(function (t) { return t.prop_id; });
    var noUpdate = window.dash_clientside.no_update;
    var decoration = function (d) { return !d || d.kind === "axis" || d.kind === "block"; };
    if (ids.some(function (p) { return p.indexOf("store-graph.") === 0; })) { return null; }
    var goto = trig.filter(function (t) { return t.prop_id.indexOf("goto-node") >= 0; });
    if (goto.length) {
      if (!goto[0].value) { return noUpdate; }
      return JSON.parse(goto[0].prop_id.slice(0, goto[0].prop_id.lastIndexOf("."))).key;
    }
    var tapped = tap && !decoration(tap) ? tap.id : null;
    if (ids.some(function (p) { return p.indexOf(".selectedNodeData") > 0; })) {
      var chosen = (selectedNodes || []).filter(function (d) { return !decoration(d) && d.id; });
      var keys = chosen.map(function (d) { return d.id; });
      if (tapped && keys.indexOf(tapped) >= 0) { return tapped; }
      if (current && keys.indexOf(current) >= 0) { return current; }
      if (!chosen.length) { return null; }
      return chosen.reduce(function (a, b) { return (b.influence || 0) > (a.influence || 0) ? b : a; }).id;
    }
    return tapped || noUpdate;
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    vlmc: {
      hoverInfo: function (data, imageHover) {
        var ctx = window.dash_clientside.callback_context;
        var fromImage = ctx && ctx.triggered && ctx.triggered.length &&
          ctx.triggered[0].prop_id.indexOf("hoverData") >= 0;
        if (fromImage) {
          var p = imageHover && imageHover.points && imageHover.points[0];
          if (!p) { return ""; }  // the pointer left the image: no stale cell
          return "image " + (p.text || "").replace(/<br>/g, " · ") + "  ·  embedding node " + (p.customdata || "?");
        }
        if (!data || data.kind === "axis" || data.kind === "block") {
          return window.dash_clientside.no_update;
        }
        var text = data.label || data.id;
        if (data.influence !== undefined && data.influence !== null && data.kind !== "logit") {
          text += "  ·  influence " + Number(data.influence).toPrecision(3);
        }
        return text;
      },

      selectNode: function (tap, selectedNodes, gotoClicks, graph, current) {
        var key = pickNode(tap, selectedNodes, current);
        /* the same node again is no change (the details are not asked for twice) */
        return key === current ? window.dash_clientside.no_update : key;
      },

      stylesheet: function (selected, region, imageHover, base, edges) {
        demand.selected = selected || null;
        demand.region = region || null;
        if (edges !== demand.payload) {
          demand.payload = edges;
          setEdges(edges);
        }
        scheduleRefresh();
        /* restyling thousands of elements costs time: only hand cytoscape a new stylesheet
           when the region / image-hover highlight actually changed */
        var point0 = imageHover && imageHover.points && imageHover.points[0];
        var signature = JSON.stringify([region, point0 ? point0.customdata : null, base ? base.length : 0]);
        var nothing = !region && !(point0 && point0.customdata);
        if (signature === lastSignature || (lastSignature === null && nothing)) {
          lastSignature = signature;
          return window.dash_clientside.no_update;
        }
        lastSignature = signature;
        var style = (base || []).slice();
        var hasRegion = region && region.nodes && region.nodes.length > 0;
        if (hasRegion) {
          style.push({selector: "node, edge", style: {opacity: 0.15}});
          style.push({selector: "node[kind = \"axis\"], node[kind = \"block\"]", style: {opacity: 1}});
          style.push({selector: region.nodes.map(idSelector).join(", "),
                      style: {opacity: 1, "border-color": "#00a8d6", "border-width": 3}});
          style.push({selector: region.edges_from.map(function (k) { return 'edge[source = "' + k + '"]'; }).join(", "),
                      style: {opacity: 0.75}});
          style.push({selector: ".focus, .nbr, .focus-edge", style: {opacity: 1}});
        }
        if (point0 && typeof point0.customdata === "string" && point0.customdata) {
          style.push({selector: idSelector(point0.customdata),
                      style: {opacity: 1, "border-width": 6, "border-color": "#ff00c8", "overlay-color": "#ff00c8",
                              "overlay-opacity": 0.35, "overlay-padding": 8, "z-index": 30}});
        }
        return style;
      }
    }
  });

  function tooltip(el) {
    var tip = document.getElementById("cy-tooltip");
    if (!tip) {
      tip = document.createElement("div");
      tip.id = "cy-tooltip";
      tip.className = "cy-tooltip";
      el.parentNode.appendChild(tip);
    }
    return tip;
  }

  function fmt(x) {
    return (x === undefined || x === null) ? "" : Number(x).toPrecision(3);
  }

  /* Gentle zoom: about 10% per wheel notch, around the pointer (cytoscape's own wheel zoom is
     switched off in the component: it jumped 2.5-3x a notch). */
  function gentleWheel(cy, el) {
    el.addEventListener("wheel", function (evt) {
      evt.preventDefault();
      var unit = evt.deltaMode === 1 ? 33 : evt.deltaMode === 2 ? 400 : 1;
      var factor = Math.pow(1.1, -Math.max(-3, Math.min(3, evt.deltaY * unit / 100)));
      var box = el.getBoundingClientRect();
      var level = Math.max(cy.minZoom(), Math.min(cy.maxZoom(), cy.zoom() * factor));
      cy.zoom({level: level, renderedPosition: {x: evt.clientX - box.left, y: evt.clientY - box.top}});
    }, {passive: false});
  }

  /* cytoscape-svg cannot draw background images (one console error per patch thumbnail):
     an SVG export draws the patches in their mean colour instead. */
  function svgWithoutThumbnails(cy) {
    if (typeof cy.svg !== "function") { return; }
    var svg = cy.svg;
    cy.svg = function () {
      var patches = cy.nodes('[kind = "image"]');
      patches.style("background-image", "none");
      try {
        return svg.apply(cy, arguments);
      } finally {
        patches.removeStyle("background-image");
      }
    };
  }

  function tuneSubgraph() {
    var el = document.getElementById(SUBGRAPH_ID);
    var cy = cyOf(SUBGRAPH_ID);
    if (!cy || cy.__vlmcTuned) { return; }
    cy.__vlmcTuned = true;
    gentleWheel(cy, el);
    svgWithoutThumbnails(cy);
  }

  function tune() {
    tuneSubgraph();
    var el = document.getElementById(GRAPH_ID);
    var cy = cyOf(GRAPH_ID);
    if (!cy || cy.__vlmcTuned) { return; }
    var renderer = cy.renderer && cy.renderer();
    if (!renderer) { return; }
    /* faster panning in all-edges mode: a cached texture while the viewport moves */
    renderer.hideEdgesOnViewport = true;
    renderer.textureOnViewport = true;
    cy.__vlmcTuned = true;
    gentleWheel(cy, el);
    svgWithoutThumbnails(cy);
    /* a tooltip next to the pointer: node label, or an edge's endpoints and weight */
    var show = function (evt, text) {
      var tip = tooltip(el);
      var box = el.getBoundingClientRect(), parent = el.parentNode.getBoundingClientRect();
      var p = evt.renderedPosition || {x: 0, y: 0};
      tip.textContent = text;
      tip.style.left = (box.left - parent.left + p.x + 14) + "px";
      tip.style.top = (box.top - parent.top + p.y + 14) + "px";
      tip.style.display = "block";
    };
    var hide = function () { tooltip(el).style.display = "none"; };
    cy.on("mouseover", "node", function (evt) {
      var d = evt.target.data();
      if (d.kind === "axis" || d.kind === "block") { return; }
      show(evt, d.label + (d.kind !== "logit" && d.influence !== undefined ? "  ·  influence " + fmt(d.influence) : ""));
      demand.hovered = d.id;
      refresh();
    });
    cy.on("mouseout", "node", function () {
      if (demand.hovered) { demand.hovered = null; refresh(); }
    });
    cy.on("tap", "node", function (evt) {
      var d = evt.target.data();
      if (d.kind === "axis" || d.kind === "block") { return; }
      demand.selected = d.id;  // at once; the server's selection (details) follows
      refresh();
    });
    cy.on("mouseover", "edge", function (evt) {
      var e = evt.target;
      show(evt, e.source().data("label") + "  →  " + e.target().data("label") + "  ·  weight " + fmt(e.data("weight")));
    });
    cy.on("mouseout", "node, edge", hide);
    cy.on("viewport tapstart", hide);
    /* a new view replaces nodes: draw the focus's edges again once cytoscape has them */
    cy.on("add remove", function () { if (!refreshing) { scheduleRefresh(); } });
  }
  setInterval(tune, 300);
})();
