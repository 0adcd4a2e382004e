// Small progressive enhancements for every dashboard page. No framework, no build step.
(function () {
  "use strict";

  function copyText(text, button) {
    var done = function () {
      var old = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = old; }, 1600);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else { fallback(text); done(); }
  }
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text; area.setAttribute("readonly", ""); area.style.position = "fixed"; area.style.opacity = "0";
    document.body.appendChild(area); area.select();
    try { document.execCommand("copy"); } catch (e) { /* the text stays selectable by hand */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (target) copyText(target.value !== undefined && target.tagName === "INPUT" ? target.value : target.textContent, button);
      return;
    }
    var remember = event.target.closest("[data-remember-key]");
    if (remember) {
      var input = document.getElementById(remember.getAttribute("data-remember-key"));
      window.aioKeys.remember({ name: remember.getAttribute("data-key-name"), prefix: remember.getAttribute("data-key-prefix"),
                                key: input.value });
      window.aioKeys.setCurrent(input.value);
      window.location.href = "/dashboard/playground";
    }
  });

  // Forms that destroy something ask first. Signing out forgets the playground's keys in this browser.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); return; }
    if (event.target.hasAttribute("data-sign-out")) window.aioKeys.clear();
  });

  // Tabs (WAI-ARIA pattern): click or arrow keys.
  document.querySelectorAll("[data-tabs]").forEach(function (box) {
    var tabs = Array.prototype.slice.call(box.querySelectorAll("[role=tab]"));
    function select(tab) {
      tabs.forEach(function (t) {
        var on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
      });
      tab.focus();
    }
    tabs.forEach(function (tab, i) {
      tab.addEventListener("click", function () { select(tab); });
      tab.addEventListener("keydown", function (e) {
        if (e.key === "ArrowRight") select(tabs[(i + 1) % tabs.length]);
        if (e.key === "ArrowLeft") select(tabs[(i - 1 + tabs.length) % tabs.length]);
      });
    });
  });

  // API keys the user chose to keep in this browser (never sent to the dashboard).
  var STORE = "aio.playground.keys", CURRENT = "aio.playground.current";
  window.aioKeys = {
    list: function () {
      try { return JSON.parse(localStorage.getItem(STORE) || "[]"); } catch (e) { return []; }
    },
    remember: function (entry) {
      var keys = this.list().filter(function (k) { return k.key !== entry.key; });
      keys.unshift(entry);
      localStorage.setItem(STORE, JSON.stringify(keys.slice(0, 20)));
    },
    forget: function (key) {
      localStorage.setItem(STORE, JSON.stringify(this.list().filter(function (k) { return k.key !== key; })));
    },
    current: function () { return sessionStorage.getItem(CURRENT) || ""; },
    setCurrent: function (key) { sessionStorage.setItem(CURRENT, key); },
    clear: function () { localStorage.removeItem(STORE); sessionStorage.removeItem(CURRENT); }
  };
  // Keys never outlive the session: the sign-in page (after sign-out, or a session that ended) forgets them.
  // (Sign-out's answer also carries Clear-Site-Data, which browsers honour on https and localhost.)
  if (document.querySelector("[data-signed-out]")) window.aioKeys.clear();
})();
