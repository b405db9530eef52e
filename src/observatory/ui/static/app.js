/* LLM Observatory web UI behaviour. Loaded from 'self' only (the CSP forbids inline scripts).
   Everything here is an enhancement: pages work (less comfortably) without it. */
(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.add("js");

  var timeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  var axisDay = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  var axisTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  var zone = (Intl.DateTimeFormat().resolvedOptions().timeZone || "local time");

  function each(scope, selector, fn) {
    Array.prototype.forEach.call((scope || document).querySelectorAll(selector), fn);
  }

  /* --- times in the reader's time zone ------------------------------------------------------ */
  function localizeTimes(scope) {
    each(scope, "time[data-local]", function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      el.title = when.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
      el.textContent = timeFormat.format(when);
      el.removeAttribute("data-local");
    });
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  /* Custom range inputs hold UTC values from the server; show and submit them as local time. */
  function setupCustomRange(scope) {
    each(scope, "input[data-utc]", function (input) {
      if (input.value) {
        var d = new Date(input.value + ":00Z");
        if (!isNaN(d.getTime())) {
          input.value = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
            "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
        }
      }
    });
    each(scope, ".tz-label", function (el) { el.textContent = "(" + zone + ")"; });
    each(scope, "form[data-custom-range]", function (form) {
      form.addEventListener("submit", function () {
        each(form, "input[data-utc]", function (input) {
          if (!input.value) { input.disabled = true; return; }
          var local = new Date(input.value);
          if (!isNaN(local.getTime())) {
            input.type = "hidden";
            input.value = local.toISOString().replace(/\.\d+Z$/, "Z");
          }
        });
      });
    });
  }

  /* --- small behaviours --------------------------------------------------------------------- */
  function setupForms(scope) {
    each(scope, "form[data-autosubmit] select", function (select) {
      select.addEventListener("change", function () { select.form.requestSubmit(); });
    });
    each(scope, "select[data-nav-select]", function (select) {
      select.addEventListener("change", function () { window.location.assign(select.value); });
    });
    each(scope, "form[data-confirm]", function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var copy = target.closest && target.closest("[data-copy]");
    if (copy) {
      var text = copy.getAttribute("data-copy");
      var done = function () {
        var label = copy.textContent;
        copy.textContent = "Copied";
        window.setTimeout(function () { copy.textContent = label; }, 1500);
      };
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    var row = target.closest && target.closest("tr[data-href]");
    if (row && !target.closest("a, button, input, select, label")) {
      if (event.metaKey || event.ctrlKey) window.open(row.getAttribute("data-href"), "_blank");
      else window.location.assign(row.getAttribute("data-href"));
      return;
    }
    var span = target.closest && target.closest(".wf-row");
    if (span) {
      each(document, ".wf-row.is-selected", function (el) {
        el.classList.remove("is-selected");
        el.removeAttribute("aria-current");
      });
      span.classList.add("is-selected");
      span.setAttribute("aria-current", "true");
    }
    each(document, "details.popover[open]", function (details) {
      if (!details.contains(target)) details.removeAttribute("open");
    });
  });

  /* --- charts (uPlot) ----------------------------------------------------------------------- */
  function cssVar(name) {
    return getComputedStyle(root).getPropertyValue("--" + name).trim() || "#888";
  }
  function alpha(color, a) {
    var m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    var n = parseInt(m[1], 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }
  function compact(v) {
    var abs = Math.abs(v);
    if (abs >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, "") + "B";
    if (abs >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
    if (abs >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
    return String(Math.round(v * 100) / 100);
  }
  var formats = {
    int: compact,
    compact: compact,
    usd: function (v) {
      if (v === 0) return "$0";
      if (Math.abs(v) >= 100) return "$" + compact(v);
      if (Math.abs(v) >= 1) return "$" + v.toFixed(2);
      return "$" + Number(v.toPrecision(2));
    },
    ms: function (v) {
      if (v >= 60000) return (v / 60000).toFixed(1).replace(/\.0$/, "") + " min";
      if (v >= 1000) return (v / 1000).toFixed(2).replace(/0$/, "") + " s";
      return Math.round(v) + " ms";
    },
    pct: function (v) { return (Math.round(v * 10) / 10) + "%"; },
  };

  var charts = [];

  function gradient(color) {
    return function (u) {
      var top = u.bbox.top, height = u.bbox.height;
      if (!isFinite(top) || !isFinite(height) || height <= 0) return alpha(color, 0.12);
      var g = u.ctx.createLinearGradient(0, top, 0, top + height);
      g.addColorStop(0, alpha(color, 0.28));
      g.addColorStop(1, alpha(color, 0.02));
      return g;
    };
  }

  function drawChart(el) {
    var source = document.getElementById(el.getAttribute("data-source"));
    if (!source || !window.uPlot) return;
    var data = JSON.parse(source.textContent);
    var spec = data.charts[Number(el.getAttribute("data-chart"))];
    if (!spec) return;
    el.innerHTML = "";
    var hasData = spec.series.some(function (s) {
      return s.values.some(function (v) { return v !== null && v !== 0; });
    });
    if (!hasData || data.x.length < 2) {
      var empty = document.createElement("div");
      empty.className = "chart-empty";
      empty.textContent = "No data in this range";
      el.appendChild(empty);
      return;
    }
    var fmt = formats[spec.unit] || compact;
    var muted = cssVar("muted"), border = cssVar("border");
    var font = "11px " + getComputedStyle(document.body).fontFamily;
    var span = data.x[data.x.length - 1] - data.x[0];
    var colors = spec.series.map(function (s) { return cssVar(s.color); });
    var legend = el.closest("figure") && el.closest("figure").querySelector("[data-legend]");
    var summable = spec.unit === "int" || spec.unit === "compact" || spec.unit === "usd";

    function legendItem(index, value) {
      var item = document.createElement("span");
      item.className = "lg";
      var swatch = document.createElement("i");
      swatch.style.background = colors[index];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(spec.series[index].label));
      if (value !== undefined) {
        var strong = document.createElement("b");
        strong.textContent = value;
        item.appendChild(strong);
      }
      return item;
    }
    /* Idle: each series with its total (where a total means something); hover: the values. */
    function showLegend(idx) {
      if (!legend) return;
      legend.textContent = "";
      if (idx == null) {
        spec.series.forEach(function (s, i) {
          var total = summable ? s.values.reduce(function (a, v) { return a + (v || 0); }, 0) : undefined;
          legend.appendChild(legendItem(i, total === undefined ? undefined : fmt(total)));
        });
        return;
      }
      var time = document.createElement("span");
      time.className = "lg lg-time";
      time.textContent = timeFormat.format(new Date(data.x[idx] * 1000));
      legend.appendChild(time);
      spec.series.forEach(function (s, i) {
        var v = s.values[idx];
        legend.appendChild(legendItem(i, v == null ? "—" : fmt(v)));
      });
    }
    showLegend(null);

    var opts = {
      width: Math.max(el.clientWidth, 200),
      height: 190,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { show: false },
      hooks: { setCursor: [function (u) { showLegend(u.cursor.idx); }] },
      scales: {
        x: { time: true },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.12 : 1]; } },
      },
      axes: [
        {
          stroke: muted, font: font, size: 30,
          grid: { show: false }, ticks: { stroke: border, width: 1, size: 4 },
          values: function (u, vals) {
            return vals.map(function (v) {
              var d = new Date(v * 1000);
              var midnight = d.getHours() === 0 && d.getMinutes() === 0;
              if (span > 2 * 86400) return midnight ? axisDay.format(d) : axisTime.format(d);
              return midnight && span > 3 * 3600 ? axisDay.format(d) : axisTime.format(d);
            });
          },
        },
        {
          stroke: muted, font: font, size: 54, gap: 6,
          grid: { stroke: border, width: 1, dash: [3, 3] }, ticks: { show: false },
          values: function (u, vals) { return vals.map(fmt); },
        },
      ],
      series: [{}].concat(spec.series.map(function (s, i) {
        return {
          label: s.label,
          stroke: colors[i],
          width: 1.75,
          fill: s.fill ? gradient(colors[i]) : undefined,
          points: { show: false },
          spanGaps: true,
        };
      })),
    };
    var values = [data.x].concat(spec.series.map(function (s) { return s.values; }));
    charts.push({ el: el, plot: new window.uPlot(opts, values, el) });
  }

  function drawCharts() {
    charts.forEach(function (c) { c.plot.destroy(); });
    charts = [];
    each(document, ".chart[data-chart]", drawChart);
  }

  var resizeTimer = null;
  function onResize() {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(function () {
      charts.forEach(function (c) {
        c.plot.setSize({ width: Math.max(c.el.clientWidth, 200), height: 190 });
      });
    }, 120);
  }

  function init() {
    localizeTimes(document);
    setupCustomRange(document);
    setupForms(document);
    drawCharts();
    window.addEventListener("resize", onResize);
    if (window.matchMedia) {
      var scheme = window.matchMedia("(prefers-color-scheme: dark)");
      if (scheme.addEventListener) scheme.addEventListener("change", drawCharts);
    }
    document.body.addEventListener("htmx:afterSwap", function (event) {
      localizeTimes(document);
    });
    root.setAttribute("data-ready", "true");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
