// The admin console's times in the viewer's time zone: every <time datetime="...Z" data-local>
// shows its instant as local date and time; without this script it reads in UTC.
(function () {
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });
  document.querySelectorAll("time[data-local][datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) return;
    el.title = el.textContent;  // the UTC time stays one hover away
    el.textContent = format.format(when);
  });
})();
