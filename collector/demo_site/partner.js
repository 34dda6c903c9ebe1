// A stand-in for an advertising partner's pixel script (the demo container's "partner" tag,
// purpose marketing). A real one would come from the partner's servers; this one is local so
// that the demo works offline, and so that the browser tests can see when it runs: it sets
// window.__partner_loaded and requests /demo/static/partner.gif once per page.
(function () {
  if (window.__partner_loaded) return;
  window.__partner_loaded = true;
  var img = new Image(1, 1);
  img.alt = "";
  img.src = "/demo/static/partner.gif?ev=page_view&u=" + encodeURIComponent(location.pathname);
})();
