// relaytree dashboard: live updates (server-sent events replace server-rendered
// fragments by id), the client filter, and buttons posted with the CSRF token.
// No framework, no build step; embedded in the hq binary.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.content : "";
  var live = document.getElementById("live");

  function setLive(text, cls) {
    if (live) { live.textContent = text; live.className = "live " + cls; }
  }

  function applyFilter() {
    var f = document.getElementById("client-filter");
    if (!f) return;
    var q = f.value.trim().toLowerCase();
    var rows = document.querySelectorAll("#clients tr[data-name]");
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var d = r.dataset;
      var hit = !q || [d.name, d.relay, d.state, d.labels].some(function (v) {
        return (v || "").toLowerCase().indexOf(q) >= 0;
      });
      r.hidden = !hit;
    }
  }

  var filter = document.getElementById("client-filter");
  if (filter) filter.addEventListener("input", applyFilter);

  var src = document.body.dataset.events;
  if (src && window.EventSource) {
    var es = new EventSource(src);
    es.addEventListener("open", function () { setLive("live", "on"); });
    es.addEventListener("update", function (e) {
      var parts = JSON.parse(e.data);
      Object.keys(parts).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) el.innerHTML = parts[id];
      });
      applyFilter();
      setLive("live", "on");
    });
    es.addEventListener("problem", function (e) { setLive(e.data, "off"); });
    es.addEventListener("error", function () { setLive("reconnecting…", "off"); });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("action")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var flash = document.getElementById("flash");
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST",
      headers: { "x-csrf-token": csrf },
      credentials: "same-origin"
    }).then(function (r) {
      return r.text().then(function (t) {
        var msg = t;
        if (r.ok) { try { msg = JSON.parse(t).message; } catch (e) { /* plain text */ } }
        if (flash) { flash.textContent = msg; flash.className = r.ok ? "ok" : "err"; }
      });
    }).catch(function (e) {
      if (flash) { flash.textContent = String(e); flash.className = "err"; }
    }).finally(function () {
      buttons.forEach(function (b) { b.disabled = false; });
    });
  });
})();
