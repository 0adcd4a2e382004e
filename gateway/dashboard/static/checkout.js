// The checkout return page follows its order until the payment provider's webhook moves it on.
(function () {
  "use strict";
  var box = document.querySelector("[data-checkout]");
  if (!box) return;
  var order = box.getAttribute("data-order");
  var status = box.querySelector("[data-testid=order-status]");
  var balance = box.querySelector("[data-testid=balance]");
  var note = box.querySelector("[data-testid=checkout-note]");
  var tries = 0;
  function credits(micro) {
    var text = (micro / 1e6).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });
    return text;
  }
  function poll() {
    tries += 1;
    fetch("/dashboard/credits/checkout/status?order=" + encodeURIComponent(order), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data) {
          status.textContent = data.status;
          balance.textContent = credits(data.balance_micro);
          if (data.status !== "pending") {
            if (note) note.textContent = data.status === "paid" ? "Paid: the credits are in your balance." : "The payment provider has answered.";
            return;
          }
        }
        if (tries < 600) setTimeout(poll, 1000);
      }, function () { if (tries < 600) setTimeout(poll, 2000); });
  }
  if (status.textContent.trim() === "pending") setTimeout(poll, 1000);
})();
