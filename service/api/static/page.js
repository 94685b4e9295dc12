// The page at /: a model picker from GET /models (when several are served), a form built from GET /model, POST /explain and POST /explain/plot on submit, GET /groups for the
// comparison, and the model card. No library, no inline code, no eval: it runs under the page's strict CSP.
// Every word about a feature (label, unit, range, "not measured" rule) comes from the API; nothing is hard-coded here.
"use strict";
(function () {
  var card = null; // GET /model
  var groups = null; // GET /groups (null when the bundle has none)
  var apiKey = "";
  var base = ""; // "" (the server's default model) or /models/NAME/versions/VERSION, picked from GET /models
  var GROUP_ORDER = ["TP", "FN", "FP", "TN"];

  function $(id) { return document.getElementById(id); }

  // A DOM element: el("td", {class: "num"}, "1.2"); attributes with null/false values are left out.
  function el(tag, attrs) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) {
      [].concat(arguments[i]).forEach(function (c) {
        if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
      });
    }
    return e;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return String(x);
    return Number.isInteger(x) ? String(x) : String(Number(x.toFixed(digits === undefined ? 3 : digits)));
  }
  function signed(x) { return (x > 0 ? "+" : x < 0 ? "−" : "") + Math.abs(x).toFixed(2); }
  function percent(p) {
    var v = p * 100;
    if (v > 0 && v < 1) return "<1%";
    if (v < 100 && v > 99) return ">99%";
    return Math.round(v) + "%";
  }
  function withUnit(value, unit) { return unit ? fmt(value) + " " + unit : fmt(value); }

  function api(method, path, body, accept) {
    var headers = { Accept: accept || "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (apiKey) headers["X-API-Key"] = apiKey;
    return fetch(path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  }

  function problemOf(response) {
    return response.json().catch(function () {
      return { title: response.statusText || "Error", status: response.status };
    });
  }

  function problemText(p) {
    var text = (p.title || "Error") + (p.detail ? ": " + p.detail : "");
    return p.request_id ? text + " (request " + p.request_id + ")" : text;
  }

  function needKey(message) {
    $("key-box").hidden = false;
    $("form-error").textContent = message;
    $("submit").disabled = false;
    $("api-key").focus();
  }

  // ---- loading: the model card and the outcome groups ------------------------------------------------------------

  function load() {
    $("load-error").hidden = true;
    return Promise.all([api("GET", base + "/model"), api("GET", base + "/groups")]).then(function (answers) {
      var modelAnswer = answers[0];
      var groupsAnswer = answers[1];
      if (modelAnswer.status === 401) {
        needKey("This server needs an API key: enter it and press Explain.");
        return null;
      }
      if (!modelAnswer.ok) {
        return problemOf(modelAnswer).then(function (p) { showLoadError("The model card could not be loaded. " + problemText(p)); });
      }
      return Promise.all([modelAnswer.json(), groupsAnswer.ok ? groupsAnswer.json() : null]).then(function (both) {
        card = both[0];
        groups = both[1];
        buildForm();
        renderCard();
      });
    }).catch(function (err) {
      showLoadError("The service could not be reached (" + err.message + ").");
    });
  }

  // ---- the model picker: shown when the server serves more than one model version (GET /models) -------------------

  function loadModels() {
    return api("GET", "/models").then(function (r) {
      if (!r.ok) return; // an older server, or a key is needed: the default model only
      return r.json().then(function (listing) {
        var pick = $("model-pick");
        pick.textContent = "";
        var count = 0;
        listing.models.forEach(function (m) {
          m.versions.forEach(function (v) {
            count += 1;
            var isDefault = m.name === listing.default_model && v.default;
            var text = m.name + " " + v.version + (v.default ? " (default)" : "") + (v.ready ? "" : " (loading)");
            pick.append(el("option", { value: isDefault ? "" : "/models/" + m.name + "/versions/" + v.version, text: text }));
            if (isDefault) pick.lastChild.selected = true;
          });
        });
        $("model-picker").hidden = count < 2;
      });
    }).catch(function () { /* the default model only */ });
  }

  function pickModel() {
    base = $("model-pick").value;
    card = null;
    $("result").hidden = true;
    $("fields").setAttribute("aria-busy", "true");
    $("submit").disabled = true;
    $("fill-example").disabled = true;
    load();
  }

  function showLoadError(text) {
    $("load-error").textContent = text;
    $("load-error").hidden = false;
  }

  function optional(f) { return f.missing !== "required"; }

  function buildForm() {
    var positive = (card.target && card.target.positive_label) || "risk";
    document.title = positive.charAt(0).toUpperCase() + positive.slice(1) + " risk, explained · " + card.model_version;
    $("model-name").textContent = card.model_version;
    if (card.task) $("task").textContent = "Model: " + card.task + ". Each value's part in the prediction is its GradientSHAP attribution.";
    var fields = $("fields");
    fields.textContent = "";
    card.features.forEach(function (f) {
      var id = "f-" + f.name;
      var hint = (f.description || "") + " Valid " + fmt(f.valid_min) + "–" + fmt(f.valid_max) + (f.unit ? " " + f.unit : "") +
        "; training data " + fmt(f.train_min) + "–" + fmt(f.train_max) + "." +
        (optional(f) ? " Leave empty if not measured." : "");
      fields.append(el("div", { class: "field", "data-field": f.name },
        el("label", { for: id }, f.label, f.unit ? el("span", { class: "unit", text: " (" + f.unit + ")" }) : null,
          el("span", { class: "tag", text: optional(f) ? "optional" : "required" })),
        el("input", {
          id: id, name: f.name, type: "number", step: f.integer ? "1" : "any", min: f.valid_min, max: f.valid_max,
          inputmode: f.integer ? "numeric" : "decimal", autocomplete: "off", placeholder: optional(f) ? "not measured" : null,
          "aria-required": optional(f) ? null : "true", "aria-describedby": "h-" + f.name + " e-" + f.name,
        }),
        el("p", { class: "hint", id: "h-" + f.name, text: hint }),
        el("p", { class: "field-error", id: "e-" + f.name })));
    });
    fields.removeAttribute("aria-busy");
    $("submit").disabled = false;
    $("fill-example").disabled = false;
  }

  function fillExample() {
    card.features.forEach(function (f) {
      var input = $("f-" + f.name);
      // an example of 0 for a field that may be missing means "not measured": leave it empty
      input.value = f.example === null || f.example === undefined || (optional(f) && f.example === 0) ? "" : String(f.example);
    });
    clearErrors();
  }

  // ---- submitting -------------------------------------------------------------------------------------------

  function clearErrors() {
    $("form-error").textContent = "";
    document.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
    document.querySelectorAll("input[aria-invalid]").forEach(function (i) { i.removeAttribute("aria-invalid"); });
  }

  function fieldError(name, message) {
    var input = $("f-" + name);
    if (!input) return false;
    input.setAttribute("aria-invalid", "true");
    var p = $("e-" + name);
    p.textContent = p.textContent ? p.textContent + " " + message : message;
    return true;
  }

  function focusFirstError() {
    var first = document.querySelector("input[aria-invalid='true']");
    if (first) first.focus();
  }

  // The record as the API takes it: empty optional fields are sent as null ("not measured"), empty required ones
  // are left out (the API names them), a number the browser cannot read is refused here, next to its field.
  function readRecord() {
    var record = {};
    var unreadable = false;
    card.features.forEach(function (f) {
      var input = $("f-" + f.name);
      if (input.validity && input.validity.badInput) {
        fieldError(f.name, "Enter a number" + (optional(f) ? ", or leave it empty if not measured." : "."));
        unreadable = true;
        return;
      }
      var text = input.value.trim();
      if (text === "") {
        if (optional(f)) record[f.name] = null;
        return;
      }
      record[f.name] = Number(text);
    });
    return unreadable ? null : record;
  }

  function submit(event) {
    event.preventDefault();
    clearErrors();
    if ($("key-box").hidden === false) apiKey = $("api-key").value.trim();
    if (card === null) {
      load();
      return;
    }
    var record = readRecord();
    if (record === null) {
      focusFirstError();
      return;
    }
    var button = $("submit");
    button.disabled = true;
    button.textContent = "Explaining…";
    api("POST", base + "/explain", record).then(function (r) {
      if (r.ok) {
        return r.json().then(function (explanation) {
          // drawn for the width it gets: narrow screens get labels above the bars, in readable type
          var width = Math.max(320, Math.min(1000, chartWidth()));
          return api("POST", base + "/explain/plot?width=" + width, record, "image/svg+xml").then(function (plot) {
            return (plot.ok ? plot.text() : Promise.resolve(null)).then(function (svg) { showResult(explanation, svg); });
          });
        });
      }
      return problemOf(r).then(function (p) { showProblem(r.status, p); });
    }).catch(function (err) {
      $("form-error").textContent = "The service could not be reached (" + err.message + ").";
    }).finally(function () {
      button.disabled = false;
      button.textContent = "Explain";
    });
  }

  function showProblem(status, p) {
    if (status === 401) {
      needKey("This server needs an API key: enter it and press Explain again.");
      return;
    }
    var general = [];
    (p.errors || []).forEach(function (e) {
      var message = e.message || e.rule || "invalid value";
      if (!fieldError(e.field, message + ".")) general.push((e.field ? e.field + ": " : "") + message);
    });
    $("form-error").textContent = general.length ? general.join("; ") : (p.errors && p.errors.length ? "Please correct the fields marked." : problemText(p));
    focusFirstError();
  }

  // ---- the result -------------------------------------------------------------------------------------------

  // the room the chart will have: the result column beside the form, or the whole width on narrow screens
  function chartWidth() {
    if (!$("result").hidden) return $("chart").clientWidth;
    var layout = document.querySelector(".layout").clientWidth;
    var stacked = window.matchMedia("(max-width: 52rem)").matches;
    return Math.round((stacked ? layout : layout - $("record-form").offsetWidth - 24) - 34);
  }

  function showResult(ex, svgText) {
    var pred = ex.prediction;
    var risk = $("risk");
    risk.textContent = percent(pred.probability);
    risk.className = "risk " + (pred.label === 1 ? "high" : "low");
    $("risk-words").textContent = "predicted risk of " + card.target.positive_label + ": " +
      (pred.label === 1 ? "at or above" : "below") + " the model's threshold of " + percent(pred.threshold) +
      ", so labelled \u201c" + pred.label_name + "\u201d.";
    $("summary").textContent = ex.summary || "";
    showChart(svgText, ex);
    showNotes(ex);
    showComparison(ex);
    var result = $("result");
    result.hidden = false;
    $("result-title").focus();
  }

  function showChart(svgText, ex) {
    var holder = $("chart");
    holder.textContent = "";
    var doc = svgText ? new DOMParser().parseFromString(svgText, "image/svg+xml") : null;
    if (!doc || doc.getElementsByTagName("parsererror").length) {
      holder.append(el("p", { class: "error", text: "The picture could not be drawn; the numbers are in the table below." }));
      return;
    }
    var svg = document.importNode(doc.documentElement, true);
    svg.setAttribute("id", "attributions");
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    holder.append(svg);
    $("chart-caption").textContent = "From the base value (" + ex.base_value.toFixed(2) + ", the model's average " + ex.output +
      " over the training population) to this patient's " + ex.output_value.toFixed(2) +
      ": red bars raise the risk, blue bars lower it, largest first.";
  }

  function showNotes(ex) {
    var notes = $("notes");
    notes.textContent = "";
    var byName = {};
    ex.attributions.forEach(function (a) { byName[a.feature] = a; });
    (ex.prediction.imputed || []).forEach(function (name) {
      var a = byName[name];
      notes.append(el("li", { "data-note": "imputed", "data-feature": name, text: (a ? a.label : name) +
        " was not measured: the model used the training median, " + (a ? withUnit(a.value, a.unit) : "") + "." }));
    });
    (ex.prediction.warnings || []).forEach(function (w) {
      notes.append(el("li", { "data-note": w.code, "data-feature": w.feature, text: w.message }));
    });
    if (!notes.children.length) notes.append(el("li", { text: "Every value was measured and lies within the training data's range." }));
    notes.append(el("li", { class: "hint", text: "Attributions by " + ex.method + " GradientSHAP against " + ex.n_baselines +
      " baseline patients; they add up to the output minus the base value within " + Math.abs(ex.completeness_gap).toExponential(1) + "." }));
  }

  function groupTitle(name) {
    var pos = card.target.positive_label, neg = card.target.negative_label;
    return {
      TP: "true positives (" + pos + ", predicted " + pos + ")",
      TN: "true negatives (" + neg + ", predicted " + neg + ")",
      FP: "false positives (" + neg + ", predicted " + pos + ")",
      FN: "false negatives (" + pos + ", predicted " + neg + ")",
      ALL: "all evaluation records",
    }[name] || name;
  }

  function showComparison(ex) {
    var box = $("comparison-box");
    var names = groups ? GROUP_ORDER.filter(function (g) { return groups.groups && groups.groups[g]; }) : [];
    var sameScale = groups && groups.explanation && groups.explanation.output === ex.output;
    if (!names.length || !sameScale) {
      box.hidden = true;
      return;
    }
    var means = {};
    names.forEach(function (g) {
      means[g] = {};
      groups.groups[g].features.forEach(function (f) { means[g][f.feature] = f; });
    });
    // the group whose mean explanation is nearest (Euclidean, over the features) to this patient's
    var nearest = null, best = Infinity;
    names.forEach(function (g) {
      var d = 0;
      ex.attributions.forEach(function (a) {
        var m = means[g][a.feature];
        d += Math.pow(a.attribution - (m && m.mean !== null ? m.mean : 0), 2);
      });
      if (d < best) { best = d; nearest = g; }
    });
    $("comparison-summary").textContent = "This patient's explanation is closest to the mean explanation of the " +
      groupTitle(nearest) + " (n=" + groups.groups[nearest].count + ") among the " + groups.evaluation_set_size +
      " evaluation records. Mean attribution of each group, with the group's mean value:";
    var table = $("comparison");
    table.textContent = "";
    table.append(el("caption", { class: "hint", text: "Attributions on the " + ex.output + " scale; groups at the model's threshold." }));
    table.append(el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: "Feature" }),
      el("th", { scope: "col", class: "num", text: "This patient" }),
      names.map(function (g) {
        return el("th", { scope: "col", class: "num" }, el("a", { href: "/groups/" + g + "/plot", title: groupTitle(g) + ": picture" }, g),
          el("br"), el("span", { class: "unit", text: "n=" + groups.groups[g].count }));
      }))));
    var body = el("tbody", {});
    ex.attributions.slice().sort(function (a, b) { return Math.abs(b.attribution) - Math.abs(a.attribution); }).forEach(function (a) {
      body.append(el("tr", { "data-feature": a.feature },
        el("th", { scope: "row" }, a.label, a.unit ? el("span", { class: "unit", text: " (" + a.unit + ")" }) : null),
        el("td", { class: "num" }, el("span", { class: a.attribution >= 0 ? "pos" : "neg", text: signed(a.attribution) }),
          el("br"), el("span", { class: "unit", text: fmt(a.value, 2) + (a.imputed ? " (imputed)" : "") })),
        names.map(function (g) {
          var m = means[g][a.feature];
          if (!m) return el("td", { class: "num", text: "–" });
          return el("td", { class: "num" }, el("span", { class: m.mean >= 0 ? "pos" : "neg", text: signed(m.mean) }),
            el("br"), el("span", { class: "unit", text: fmt(m.mean_value, 1) }));
        })));
    });
    table.append(body);
    box.hidden = false;
  }

  // ---- the model card ---------------------------------------------------------------------------------------

  function section(title, id) {
    var s = el("section", { "aria-labelledby": id }, el("h2", { id: id, text: title }));
    $("card").append(s);
    return s;
  }

  function dl(pairs) {
    var list = el("dl", {});
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      list.append(el("dt", { text: p[0] }), el("dd", {}, p[1] instanceof Node ? p[1] : String(p[1])));
    });
    return list;
  }

  function words(key) { return key.replace(/_/g, " ").replace(/^./, function (c) { return c.toUpperCase(); }); }

  // Any JSON value as text or nested lists (for the card's fields this page does not know by name).
  function generic(value) {
    if (value === null || value === undefined) return "–";
    if (Array.isArray(value)) {
      if (value.every(function (v) { return v === null || typeof v !== "object"; })) {
        return value.length > 12 ? value.length + " values" : value.map(function (v) { return fmt(v); }).join(", ");
      }
      return value.length > 12 ? value.length + " entries" : el("ul", {}, value.map(function (v) { return el("li", {}, generic(v)); }));
    }
    if (typeof value === "object") {
      return dl(Object.keys(value).map(function (k) { return [words(k), generic(value[k])]; }));
    }
    return fmt(value);
  }

  function isMetric(v) { return v && typeof v === "object" && "value" in v && "ci_low" in v && "ci_high" in v; }

  function metricsTable(metrics) {
    var names = Object.keys(metrics).filter(function (k) { return isMetric(metrics[k]); });
    if (!names.length) return null;
    return el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Metrics" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Metric" }), el("th", { scope: "col", class: "num", text: "Value" }),
        el("th", { scope: "col", class: "num", text: "95% interval" }))),
      el("tbody", {}, names.map(function (k) {
        var m = metrics[k];
        return el("tr", { "data-metric": k }, el("th", { scope: "row", text: words(k) }), el("td", { class: "num", text: fmt(m.value, 3) }),
          el("td", { class: "num", text: fmt(m.ci_low, 3) + " – " + fmt(m.ci_high, 3) }));
      }))));
  }

  var KNOWN = ["name", "version", "model_version", "service_version", "task", "created_at", "target", "features", "threshold",
    "threshold_rule", "metrics", "data", "limitations", "population", "intended_use", "preprocessing", "training", "baselines", "explanation_defaults", "limits"];

  function renderCard() {
    var c = card;
    $("card").textContent = "";
    section("Overview", "card-overview").append(dl([
      ["Model", c.model_version], ["Task", c.task], ["Predicts", c.target && c.target.label],
      ["Threshold", percent(c.threshold) + " (" + fmt(c.threshold, 3) + ")" + (c.threshold_rule ? ": " + c.threshold_rule : "")],
      ["Created", c.created_at], ["Service", c.service_version], ["Intended use", c.intended_use],
    ]));
    var m = c.metrics || {};
    var perf = section("Performance", "card-metrics");
    if (m.evaluation_set) perf.append(el("p", { class: "hint", text: "On the " + m.evaluation_set + "; intervals: " + ((m.mlp && m.mlp.interval) || "95%") + "." }));
    Object.keys(m).forEach(function (model) {
      var table = m[model] && typeof m[model] === "object" ? metricsTable(m[model]) : null;
      if (table) perf.append(el("h3", { text: model === "mlp" ? "This model (MLP)" : words(model) + " (reference)" }), table);
    });
    var rest = Object.keys(m).filter(function (k) { return !(m[k] && typeof m[k] === "object" && metricsTable(m[k])) && k !== "evaluation_set"; });
    if (rest.length) {
      perf.append(el("details", {}, el("summary", { text: "More evaluation results" }),
        dl(rest.map(function (k) { return [words(k), generic(m[k])]; }))));
    }
    var pop = section("Population", "card-population");
    if (c.population) pop.append(generic(c.population));
    if (c.data) {
      var d = c.data;
      pop.append(dl([
        ["Data", d.file], ["Records", d.records !== undefined ? d.records + (d.positives !== undefined ? " (" + d.positives + " " + c.target.positive_label + ")" : "") : null],
        ["Split", d.split ? generic(d.split) : null], ["Split rule", d.split_rule], ["Provenance", d.provenance], ["SHA-256", d.sha256],
      ]));
    }
    pop.append(el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Features" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Feature", "Valid range", "Training range", "When not measured"].map(function (h) { return el("th", { scope: "col", text: h }); }))),
      el("tbody", {}, c.features.map(function (f) {
        return el("tr", {}, el("th", { scope: "row" }, f.label, f.unit ? el("span", { class: "unit", text: " (" + f.unit + ")" }) : null),
          el("td", { text: fmt(f.valid_min) + "–" + fmt(f.valid_max) }), el("td", { text: fmt(f.train_min) + "–" + fmt(f.train_max) }),
          el("td", { text: optional(f) ? "imputed with " + fmt(f.imputed_with, 2) : "required" }));
      })))));
    var lim = section("Limitations", "card-limitations");
    if (c.limitations) {
      lim.append(generic(c.limitations));
    } else {
      // the card has no limitations field: the ones its own numbers state
      lim.append(el("ul", {},
        el("li", { text: "Trained on " + (c.data && c.data.records ? c.data.records + " records" : "a small data set") + " of one population" + (c.data && c.data.file ? " (" + c.data.file + ")" : "") + "; other populations may differ." }),
        el("li", { text: "Outside each feature's training range (table above) the model extrapolates; the page says so when it happens." }),
        el("li", { text: "Metrics come from " + (m.evaluation_set || "a held-out set") + ": see their intervals." }),
        el("li", { text: "Attributions explain the model, not the patient's physiology." })));
    }
    var others = Object.keys(c).filter(function (k) { return KNOWN.indexOf(k) < 0 || ["preprocessing", "training", "explanation_defaults", "limits"].indexOf(k) >= 0; });
    if (c.baselines) others.push("baselines");
    var more = section("Details", "card-details");
    others.forEach(function (k) {
      var value = k === "baselines" ? { count: c.baselines.count, rule: c.baselines.rule } : c[k];
      more.append(el("details", { "data-card-field": k }, el("summary", { text: words(k) }), generic(value)));
    });
  }

  // ---- views ------------------------------------------------------------------------------------------------

  function showView(byUser) {
    var model = window.location.hash === "#model";
    $("view-explain").hidden = model;
    $("view-model").hidden = !model;
    $("nav-explain").toggleAttribute("aria-current", !model);
    $("nav-model").toggleAttribute("aria-current", model);
    if (model) $("nav-model").setAttribute("aria-current", "page"); else $("nav-explain").setAttribute("aria-current", "page");
    if (byUser) $(model ? "card-title" : "explain-title").focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("record-form").addEventListener("submit", submit);
    $("record-form").addEventListener("reset", function () { clearErrors(); $("result").hidden = true; });
    $("fill-example").addEventListener("click", fillExample);
    $("model-pick").addEventListener("change", pickModel);
    loadModels();
    window.addEventListener("hashchange", function () { showView(true); });
    showView(false);
    load();
  });
})();
