// Progressive enhancement of the deletions page; everything works without it. It shows each time
// in the browser's own zone on hover and how far away the undelete windows and deadlines are, and
// it disables a form's buttons once it is sent, so that a double click does not send it twice.
(function () {
  "use strict";
  var units = [["d", 86400], ["h", 3600], ["m", 60]];
  function distance(seconds) {
    var s = Math.abs(seconds);
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][1]) { return Math.floor(s / units[i][1]) + units[i][0]; }
    }
    return Math.floor(s) + "s";
  }
  // A page shown again from the back-forward cache gets its buttons back.
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) { return; }
    document.querySelectorAll('form[method="post"] button').forEach(function (b) { b.disabled = false; });
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll('form[method="post"]').forEach(function (form) {
      form.addEventListener("submit", function () {
        // After the form's data is taken, which includes the button pressed.
        setTimeout(function () {
          form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
        }, 0);
      });
    });
    // Distances are taken from the proxy's clock, which the footer shows, not the browser's.
    var clock = document.querySelector("footer time[datetime]");
    var now = clock ? Date.parse(clock.getAttribute("datetime")) : NaN;
    if (isNaN(now)) { now = Date.now(); }
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("datetime"));
      if (isNaN(t)) { return; }
      el.title = new Date(t).toString();
      var cell = el.closest("table.list td");
      if (!cell) { return; }
      var rel = document.createElement("span");
      rel.className = "rel";
      var secs = (t - now) / 1000;
      if (Math.abs(secs) < 1) {
        rel.textContent = "now";
      } else {
        rel.textContent = secs > 0 ? "in " + distance(secs) : distance(secs) + " ago";
      }
      el.after(rel);
    });
  });
})();
