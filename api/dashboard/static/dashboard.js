// agentsched dashboard: the little the server cannot do. No inline script anywhere (CSP).
// - times: shown in the browser's timezone, UTC kept on hover (the title attribute)
// - the new-task form's timezone defaults to the browser's
// - "select all" checkboxes for the operators' bulk actions
// - confirmation before cancelling or revoking
// - the live answer emptied when the running step changes
(function () {
  "use strict";
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  function localizeTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]:not([data-local])");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var moment = new Date(el.getAttribute("datetime"));
      if (isNaN(moment.getTime())) continue;
      el.setAttribute("title", el.textContent.trim());
      el.textContent = format.format(moment);
      el.setAttribute("data-local", "");
    }
  }

  function defaultTimezone(root) {
    var zone;
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
    var inputs = (root || document).querySelectorAll("input[data-browser-timezone]");
    for (var i = 0; i < inputs.length; i++) {
      if (!inputs[i].value && zone) inputs[i].value = zone;
    }
  }

  function onSelectAll(event) {
    var box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    var group = box.getAttribute("data-select-all");
    var members = document.querySelectorAll('input[data-group="' + group + '"]');
    for (var i = 0; i < members.length; i++) members[i].checked = box.checked;
  }

  // A button with data-confirm asks before its form is sent (no inline handler: CSP).
  function onSubmit(event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }

  // The live answer shows the running step's text: a step (or the run) changing empties it,
  // and the step that runs next streams into it.
  function onSseMessage(event) {
    if (event.target.id !== "run-body" || !event.detail || event.detail.type !== "changed") return;
    var output = document.getElementById("live-output");
    if (output) output.textContent = "";
  }

  function init(root) {
    localizeTimes(root);
    defaultTimezone(root);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSettle", function (event) { init(event.target); });
  document.addEventListener("change", onSelectAll);
  document.addEventListener("submit", onSubmit);
  document.addEventListener("htmx:sseMessage", onSseMessage);
})();
