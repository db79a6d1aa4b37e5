// Keeps the page current: every few seconds, fetch this page's live block (the server
// renders it alone when asked with X-Aqueue-Live) and swap it in. No framework.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  if (!live) return;
  var every = Math.max(1, parseInt(live.dataset.refresh || "3", 10)) * 1000;
  var busy = false;

  function stamp(text) { if (updated) updated.textContent = text; }

  function refresh() {
    // Do not swap the page out from under someone who is choosing an action.
    if (busy || document.hidden || live.contains(document.activeElement) && document.activeElement !== document.body) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Aqueue-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        stamp("updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) { stamp("update failed (" + e.message + "), retrying"); })
      .finally(function () { busy = false; });
  }

  // Destructive actions ask first. Delegated: forms are replaced on every refresh.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) ev.preventDefault();
  });

  stamp("updated " + new Date().toLocaleTimeString());
  window.setInterval(refresh, every);
})();
