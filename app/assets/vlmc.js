/* vlm-circuits explorer: client-side callbacks and cytoscape tuning (served locally by Dash). */
(function () {
  "use strict";
  var GRAPH_ID = "attribution-graph";
  var lastSignature = null;

  function idSelector(key) {
    return "#" + key;  // node keys are [A-Za-z0-9_] only (app/view/keys.py)
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

      stylesheet: function (selection, region, imageHover, base) {
        /* restyling thousands of elements costs time: only hand cytoscape a new stylesheet
           when the highlight actually changed */
        var point0 = imageHover && imageHover.points && imageHover.points[0];
        var signature = JSON.stringify([selection, region, point0 ? point0.customdata : null, base ? base.length : 0]);
        var nothing = !selection && !region && !(point0 && point0.customdata);
        if (signature === lastSignature || (lastSignature === null && nothing)) {
          lastSignature = signature;
          return window.dash_clientside.no_update;
        }
        lastSignature = signature;
        var style = (base || []).slice();
        var hasSel = selection && selection.nodes && selection.nodes.length > 0;
        var hasRegion = region && region.nodes && region.nodes.length > 0;
        if (hasSel || hasRegion) {
          style.push({selector: "node, edge", style: {opacity: 0.15}});
          style.push({selector: "node[kind = \"axis\"], node[kind = \"block\"]", style: {opacity: 1}});
        }
        if (hasRegion) {
          style.push({selector: region.nodes.map(idSelector).join(", "),
                      style: {opacity: 1, "border-color": "#00a8d6", "border-width": 3}});
          style.push({selector: region.edges_from.map(function (k) { return 'edge[source = "' + k + '"]'; }).join(", "),
                      style: {opacity: 0.75}});
        }
        if (hasSel) {
          style.push({selector: selection.nodes.map(idSelector).join(", "), style: {opacity: 1}});
          if (selection.edges && selection.edges.length) {
            style.push({selector: selection.edges.map(idSelector).join(", "),
                        style: {opacity: 1, "z-index": 20, "line-style": "solid"}});
          }
          if (selection.selected) {
            style.push({selector: idSelector(selection.selected),
                        style: {opacity: 1, "border-width": 5, "border-color": "#111"}});
          }
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

  /* Faster panning on big views: draw edges only when the viewport is still, and pan/zoom a
     cached texture (cytoscape renderer options that dash-cytoscape does not expose). */
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

  function tune() {
    var el = document.getElementById(GRAPH_ID);
    var cy = el && el._cyreg && el._cyreg.cy;
    if (!cy || cy.__vlmcTuned) { return; }
    var renderer = cy.renderer && cy.renderer();
    if (!renderer) { return; }
    renderer.hideEdgesOnViewport = true;
    renderer.textureOnViewport = true;
    cy.__vlmcTuned = true;
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
    });
    cy.on("mouseover", "edge", function (evt) {
      var e = evt.target;
      show(evt, e.source().data("label") + "  →  " + e.target().data("label") + "  ·  weight " + fmt(e.data("weight")));
    });
    cy.on("mouseout", "node, edge", hide);
    cy.on("viewport tapstart", hide);
  }
  setInterval(tune, 500);
})();
