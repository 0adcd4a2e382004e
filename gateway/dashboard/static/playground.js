// The playground: streams a chat from /api/v1/chat/completions with an API key held in this browser.
// The request carries the key, never the dashboard's cookie (credentials: "omit"; the cookie's path is /dashboard).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var root = $("playground");
  if (!root) return;
  var keyInput = $("pg-key"), saved = $("pg-saved"), remember = $("pg-remember"), forget = $("pg-forget");
  var transcript = $("pg-transcript"), errorBox = $("pg-error"), form = $("pg-form"), input = $("pg-input");
  var sendBtn = $("pg-send"), stopBtn = $("pg-stop"), balanceLine = $("pg-balance");
  var messages = [];
  var controller = null;

  function fillSaved() {
    var keys = window.aioKeys.list();
    saved.innerHTML = "";
    var none = document.createElement("option");
    none.value = ""; none.textContent = keys.length ? "— choose a saved key —" : "— none saved —";
    saved.appendChild(none);
    keys.forEach(function (k) {
      var o = document.createElement("option");
      o.value = k.key; o.textContent = (k.name || "key") + " (" + (k.prefix || k.key.slice(0, 10) + "...") + ")";
      if (k.key === keyInput.value) o.selected = true;
      saved.appendChild(o);
    });
    forget.hidden = !saved.value;
  }
  keyInput.value = window.aioKeys.current();
  fillSaved();
  saved.addEventListener("change", function () {
    if (saved.value) { keyInput.value = saved.value; window.aioKeys.setCurrent(saved.value); refreshBalance(); }
    forget.hidden = !saved.value;
  });
  forget.addEventListener("click", function () {
    window.aioKeys.forget(saved.value); keyInput.value = ""; window.aioKeys.setCurrent(""); fillSaved();
  });
  keyInput.addEventListener("change", function () {
    window.aioKeys.setCurrent(keyInput.value.trim());
    if (remember.checked && keyInput.value.trim()) rememberKey();
    refreshBalance();
  });
  remember.addEventListener("change", function () { if (remember.checked && keyInput.value.trim()) rememberKey(); });
  function rememberKey() {
    var k = keyInput.value.trim();
    window.aioKeys.remember({ name: "pasted key", prefix: k.slice(0, 10) + "...", key: k });
    fillSaved();
  }

  function showError(text) { errorBox.textContent = text; errorBox.hidden = !text; }

  function plainError(status, body) {
    var msg = body && body.error && body.error.message ? body.error.message : "";
    switch (status) {
      case 401: return "This API key was not accepted: it may be revoked, expired or mistyped. " + msg;
      case 402: return "The key's account is out of credits, so the request was refused before any work. Ask for a top-up. " + msg;
      case 403: return "This key may not do that. " + msg;
      case 429: return "Rate limit reached for this key. Wait a moment and send again. " + msg;
      case 400: return "The request was not accepted: " + msg;
      case 503: case 502: case 504: return "The model could not be reached right now (no worker or upstream trouble). Try again shortly. " + msg;
      default: return "The request failed (HTTP " + status + "). " + msg;
    }
  }

  function refreshBalance() {
    var key = keyInput.value.trim();
    if (!key) { balanceLine.textContent = ""; return; }
    fetch("/billing/credits", { headers: { "Authorization": "Bearer " + key }, credentials: "omit" })
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        if (res[0] === 200) balanceLine.textContent = "Key's account: " + Number(res[1].available).toLocaleString(undefined, { maximumFractionDigits: 4 }) + " credits available";
        else balanceLine.textContent = plainError(res[0], res[1]);
      })
      .catch(function () { balanceLine.textContent = ""; });
  }
  refreshBalance();

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }

  function addUser(text) {
    var empty = $("pg-empty"); if (empty) empty.remove();
    var m = el("div", "msg user");
    m.appendChild(el("div", "role", "You"));
    m.appendChild(document.createTextNode(text));
    transcript.appendChild(m);
  }

  function addAssistant() {
    var m = el("div", "msg assistant");
    m.setAttribute("data-testid", "assistant-message");
    m.appendChild(el("div", "role", "Assistant"));
    var details = el("details", "thinking");
    details.open = true; details.hidden = true;
    details.appendChild(el("summary", "", "Thinking"));
    var thinking = el("div", "thinking-text"); thinking.setAttribute("data-testid", "thinking");
    details.appendChild(thinking);
    var answer = el("div", "answer cursor"); answer.setAttribute("data-testid", "answer");
    var meta = el("div", "meta"); meta.setAttribute("data-testid", "meta");
    m.appendChild(details); m.appendChild(answer); m.appendChild(meta);
    transcript.appendChild(m);
    return { box: m, details: details, thinking: thinking, answer: answer, meta: meta };
  }

  function metaItem(box, label, value) {
    var s = el("span"); s.appendChild(document.createTextNode(label + " ")); s.appendChild(el("strong", "", String(value)));
    box.appendChild(s);
  }

  function busy(on) {
    sendBtn.disabled = on; stopBtn.hidden = !on; input.disabled = on;
  }

  async function send(text) {
    var key = keyInput.value.trim();
    if (!key) { showError("Paste an API key (or pick a saved one) first. Keys are on the API keys page."); keyInput.focus(); return; }
    showError("");
    messages.push({ role: "user", content: text });
    addUser(text);
    var out = addAssistant();
    var body = {
      model: $("pg-model").value, stream: true, stream_options: { include_usage: true },
      include_thoughts: $("pg-thoughts").checked, reasoning_effort: $("pg-effort").value,
      messages: ($("pg-system").value.trim() ? [{ role: "system", content: $("pg-system").value.trim() }] : []).concat(messages)
    };
    var max = parseInt($("pg-max").value, 10);
    if (max > 0) body.max_tokens = max;
    controller = new AbortController();
    busy(true);
    var started = performance.now(), firstToken = null, answerText = "", usage = null, finish = null;
    try {
      var resp = await fetch("/api/v1/chat/completions", {
        method: "POST", credentials: "omit", signal: controller.signal,
        headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json", "Accept": "text/event-stream" },
        body: JSON.stringify(body)
      });
      if (!resp.ok) {
        var err = null;
        try { err = await resp.json(); } catch (e) { /* not JSON */ }
        throw new Error(plainError(resp.status, err));
      }
      var reader = resp.body.getReader(), decoder = new TextDecoder(), buffer = "", finished = false;
      while (!finished) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n/g, "\n");
        var cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          var event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          var data = event.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
            .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\n");
          if (!data) continue;
          if (data === "[DONE]") { finished = true; break; }
          var obj = JSON.parse(data);
          if (obj.error) throw new Error("The stream stopped with an error: " + (obj.error.message || "unknown error") + " You are not charged for a failed request.");
          if (obj.usage) usage = obj.usage;
          var choice = obj.choices && obj.choices[0];
          if (!choice) continue;
          var delta = choice.delta || {};
          var thought = delta.reasoning_content || delta.reasoning;
          if (thought) {
            if (firstToken === null) firstToken = performance.now();
            out.details.hidden = false; out.thinking.textContent += thought;
          }
          if (delta.content) {
            if (firstToken === null) firstToken = performance.now();
            if (!answerText) out.details.open = false;  // fold the thinking once the answer starts
            answerText += delta.content; out.answer.textContent = answerText;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
          transcript.scrollTop = transcript.scrollHeight;
        }
      }
      messages.push({ role: "assistant", content: answerText });
      if (usage) {
        metaItem(out.meta, "credits", Number(usage.credits_charged).toLocaleString(undefined, { maximumFractionDigits: 6 }));
        metaItem(out.meta, "prompt", usage.prompt_tokens);
        metaItem(out.meta, "completion", usage.completion_tokens);
        var r = usage.completion_tokens_details && usage.completion_tokens_details.reasoning_tokens;
        if (r) metaItem(out.meta, "of which thinking", r);
      }
      if (firstToken !== null) metaItem(out.meta, "first token", Math.round(firstToken - started) + " ms");
      metaItem(out.meta, "total", ((performance.now() - started) / 1000).toFixed(2) + " s");
      if (finish && finish !== "stop") metaItem(out.meta, "finish", finish);
    } catch (e) {
      messages.pop();
      if (e.name === "AbortError") {
        metaItem(out.meta, "stopped", "by you");
      } else {
        showError(e.message || String(e));
        if (!answerText && !out.thinking.textContent) out.box.remove();
      }
    } finally {
      out.answer.classList.remove("cursor");
      controller = null;
      busy(false);
      input.focus();
      refreshBalance();
      setTimeout(refreshBalance, 1200);  // again once billing has settled the request (normally milliseconds)
    }
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  stopBtn.addEventListener("click", function () { if (controller) controller.abort(); });
  $("pg-clear").addEventListener("click", function () {
    if (controller) controller.abort();
    messages = []; transcript.innerHTML = ""; showError("");
  });
})();
