// Starts ReDoc (served from /static/vendor/) on /redoc, in the page's system font: no Google Fonts, nothing fetched.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("redoc");
  var font = getComputedStyle(root).fontFamily;
  window.Redoc.init(
    root.dataset.openapiUrl,
    { theme: { typography: { fontFamily: font, headings: { fontFamily: font } } } },
    root
  );
});
