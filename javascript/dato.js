// sd-webui-dato: the accordion's per-step preview and the step-count forwarding.
//
// Python (scripts/dato_webui/ui.py) computes the preview: the schedule resampled
// to the steps each pass will run, as JSON in the data-dato attribute of
// .dato-preview. This file draws it (one cell per step: full, cached at depth d,
// or reused; a bar for the token ratio) and keeps Python informed of the tab's
// "Sampling steps", "Hires steps", Hires. fix switch and denoising strength by
// writing them into the accordion's hidden "context" textbox. Globals are
// prefixed "dato".

/* global gradioApp, onUiLoaded, onUiUpdate, updateInput */

var datoTabs = ["txt2img", "img2img"];

// What the preview needs from the page, under the names of the txt2img/img2img API's fields (the server reads
// the page's context as it reads an API request: scripts/dato_webui/host.py geometry_from_request).
var datoSources = {
    steps: ["both", "#TAB_steps input[type=number]"],
    sampler_name: ["both", "#TAB_sampling input"],
    width: ["both", "#TAB_width input[type=number]"],
    height: ["both", "#TAB_height input[type=number]"],
    enable_hr: ["txt2img", "#txt2img_hr-checkbox input[type=checkbox]"],
    hr_second_pass_steps: ["txt2img", "#txt2img_hires_steps input[type=number]"],
    hr_scale: ["txt2img", "#txt2img_hr_scale input[type=number]"],
    hr_resize_x: ["txt2img", "#txt2img_hr_resize_x input[type=number]"],
    hr_resize_y: ["txt2img", "#txt2img_hr_resize_y input[type=number]"],
    hr_sampler_name: ["txt2img", "#hr_sampler input"],
    denoising_strength: ["img2img", "#img2img_denoising_strength input[type=number]"],
};

// The element a source reads on this tab ("TAB" stands for the tab's name), or null where the tab has none.
function datoSelector(key, tab) {
    var source = datoSources[key];
    return source[0] === "both" || source[0] === tab ? source[1].replace("TAB", tab) : null;
}
var datoTextSources = {sampler_name: true, hr_sampler_name: true};

function datoEscape(text) {
    return String(text).replace(/[&<>"']/g, function(c) {
        return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
}

function datoActionLabel(action) {
    if (action === -3) return "full or cached, decided during the run";
    if (action === -1) return "full";
    if (action === -2) return "reuse";
    return "cached d" + action;
}

function datoCellClass(action) {
    if (action === -3) return "dato-adaptive";
    if (action === -1) return "dato-full";
    if (action === -2) return "dato-reuse";
    return "dato-cached dato-depth-" + Math.min(action, 11);
}

// HTML of one pass: a row of cells plus a one-line summary.
function datoPassHtml(pass) {
    var head = '<div class="dato-pass-label">' + datoEscape(pass.label) + " · " + pass.steps + " steps";
    if (pass.calls && pass.calls !== pass.steps) head += " (" + pass.calls + " model calls, one cell each)";
    if (pass.off) {
        var why = pass.reason ? ": " + datoEscape(pass.reason) : "";
        return '<div class="dato-pass">' + head + ' · <span class="dato-off">off' + why + "</span></div></div>";
    }
    var tokens = pass.method !== "none";
    var adaptive = pass.adaptive;
    head += adaptive ? " · adaptive caching (threshold " + Number(adaptive.threshold) + ", ≤ " + adaptive.cap + " cached in a row)"
        : " · " + pass.full + " full, " + pass.cached + " cached";
    if (tokens) head += " · " + datoEscape(pass.method) + " ≤ " + Math.max.apply(null, pass.ratio).toFixed(2);
    if (pass.speedup) head += ' · <span class="dato-speedup">' + (adaptive ? "at most ≈" : "≈") + Number(pass.speedup).toFixed(2) + "× faster (MACs)</span>";
    head += "</div>";
    var notes = (pass.notes || []).map(function(note) {
        return '<div class="dato-note">' + datoEscape(note) + "</div>";
    }).join("");
    var cells = pass.cache.map(function(action, i) {
        if (adaptive) action = i === 0 ? -1 : -3; // the first step is full; the rest are decided during the run
        var ratio = pass.ratio[i] || 0;
        var title = "step " + (i + 1) + ": " + datoActionLabel(action) + (tokens && ratio > 0 ? ", " + pass.method + " " + ratio.toFixed(2) : "");
        var bar = tokens && ratio > 0 ? '<span class="dato-ratio" style="height:' + Math.round(ratio / (pass.ratio_limit || 1) * 100) + '%"></span>' : "";
        var text = action >= 0 ? String(action) : action === -2 ? "R" : action === -3 ? "?" : "";
        return '<span class="dato-cell ' + datoCellClass(action) + '" title="' + datoEscape(title) + '">' + bar + '<span class="dato-cell-text">' + text + "</span></span>";
    });
    return '<div class="dato-pass">' + head + notes + '<div class="dato-cells">' + cells.join("") + "</div></div>";
}

function datoPreviewHtml(data) {
    var passes = (data && data.passes) || [];
    var legend = '<div class="dato-legend"><span class="dato-cell dato-full"></span> full step' +
        ' <span class="dato-cell dato-cached dato-depth-0"></span> cached (digit = depth)' +
        ' <span class="dato-cell dato-reuse"></span> reuse previous output' +
        ' <span class="dato-legend-ratio"></span> token ratio</div>';
    return passes.map(datoPassHtml).join("") + legend;
}

function datoSummaryText(data) {
    var first = data && data.passes && data.passes[0];
    if (!first || first.off) return "";
    var text = first.adaptive ? "adaptive " + Number(first.adaptive.threshold) : first.name + " · " + first.full + "/" + first.steps + " full";
    if (first.method !== "none") text += " · " + first.method + " " + Math.max.apply(null, first.ratio).toFixed(2);
    if (first.speedup) text += " · " + (first.adaptive ? "≤ " : "≈") + Number(first.speedup).toFixed(2) + "×";
    return text;
}

function datoDrawPreviews(root) {
    var boxes = root.querySelectorAll(".dato-preview[data-dato]");
    boxes.forEach(function(box) {
        var raw = box.getAttribute("data-dato");
        if (box.datoDrawn === raw) return;
        var data;
        try {
            data = JSON.parse(raw);
        } catch (e) {
            return;
        }
        box.datoDrawn = raw;
        if (!data.passes) return; // an error message: nothing to draw
        var drawing = box.querySelector(".dato-drawing");
        if (!drawing) {
            drawing = document.createElement("div");
            drawing.className = "dato-drawing";
            box.appendChild(drawing);
        }
        drawing.innerHTML = datoPreviewHtml(data);
        box.classList.add("dato-drawn");
        var container = box.closest("[id^=script_]");
        if (!container) return; // not an accordion's preview (the Search tab's front point)
        var tab = container.id.indexOf("img2img") >= 0 ? "img2img" : "txt2img";
        var summary = root.querySelector("#script_" + tab + "_dato_summary");
        if (summary) summary.textContent = datoSummaryText(data);
    });
}

function datoReadContext(root, tab) {
    var context = {};
    Object.keys(datoSources).forEach(function(key) {
        var selector = datoSelector(key, tab);
        var el = selector && root.querySelector(selector);
        if (!el) return;
        if (el.type === "checkbox") context[key] = el.checked;
        else if (datoTextSources[key]) context[key] = String(el.value || "");
        else context[key] = parseFloat(el.value);
    });
    return context;
}

var datoNonce = 0;

// Write the context into the hidden textbox. A counter makes every write a new value: Gradio only fires
// "change" when the value differs, and a re-send must fire again.
function datoSendContext(box, context) {
    box.datoContext = context;
    datoNonce += 1;
    box.value = JSON.stringify(Object.assign({}, context, {n: datoNonce}));
    updateInput(box);
}

function datoForwardContext(root, tab) {
    var box = root.querySelector("#script_" + tab + "_dato_context textarea");
    if (!box) return;
    var context = datoReadContext(root, tab);
    if (box.datoContext && JSON.stringify(box.datoContext) === JSON.stringify(context)) return;
    datoSendContext(box, context);
}

// Gradio 3 ignores a trigger while the same event is still running (e.g. at page load, or on a busy
// server), so a forwarded step count can be lost. The preview echoes the context it was computed for;
// re-send until they agree.
function datoResendLostContext(root) {
    datoTabs.forEach(function(tab) {
        var box = root.querySelector("#script_" + tab + "_dato_context textarea");
        var preview = root.querySelector("#script_" + tab + "_dato_preview [data-dato]");
        if (!box || !preview || !box.value) return;
        var shown;
        try {
            shown = JSON.parse(preview.getAttribute("data-dato")).context;
        } catch (e) {
            return;
        }
        if (shown === undefined || shown === box.value || !box.datoContext) return;
        var now = Date.now();
        if (box.datoLastResend && now - box.datoLastResend < 2000) return;
        box.datoLastResend = now;
        datoSendContext(box, box.datoContext);
    });
}

function datoWatch(root) {
    datoTabs.forEach(function(tab) {
        Object.keys(datoSources).forEach(function(key) {
            var selector = datoSelector(key, tab);
            var el = selector && root.querySelector(selector);
            if (!el || el.datoWatched) return;
            el.datoWatched = true;
            ["input", "change"].forEach(function(type) {
                el.addEventListener(type, function() {
                    datoForwardContext(root, tab);
                });
            });
        });
        // range sliders move the number box without an input event on it
        var range = root.querySelector("#" + tab + "_steps input[type=range]");
        if (range && !range.datoWatched) {
            range.datoWatched = true;
            range.addEventListener("input", function() {
                setTimeout(function() {
                    datoForwardContext(root, tab);
                }, 0);
            });
        }
        datoForwardContext(root, tab);
    });
}

// The Search tab: while its status says a search is running (a marker the server adds) and the tab is shown,
// press its Refresh button every few seconds, so progress and the front appear without a click.
var datoSearchPollMs = 5000;

function datoPollSearch(root) {
    var tab = root.querySelector("#tab_dato_search");
    var button = root.querySelector("#dato_search_refresh");
    if (!tab || !button || tab.offsetParent === null) return;
    if (!root.querySelector("#dato_search_status .dato-search-running")) return;
    var now = Date.now();
    if (button.datoLastPoll && now - button.datoLastPoll < datoSearchPollMs) return;
    button.datoLastPoll = now;
    button.click();
}

if (typeof onUiLoaded === "function") {
    onUiLoaded(function() {
        datoWatch(gradioApp());
        datoDrawPreviews(gradioApp());
        setInterval(function() {
            datoTabs.forEach(function(tab) {
                datoForwardContext(gradioApp(), tab); // dropdowns change their value without an input event
            });
            datoResendLostContext(gradioApp());
            datoPollSearch(gradioApp());
        }, 1000);
    });
}
if (typeof onUiUpdate === "function") {
    onUiUpdate(function() {
        datoDrawPreviews(gradioApp());
    });
}
