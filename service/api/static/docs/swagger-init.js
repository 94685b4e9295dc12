// Starts Swagger UI (served from /static/vendor/) on /docs: what FastAPI's page does in an inline script, as a file
// so that the page runs under a CSP without 'unsafe-inline'. The validator badge is off: it would call a public site.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    oauth2RedirectUrl: window.location.origin + "/docs/oauth2-redirect",
    presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
