// Starts Swagger UI or ReDoc on /openapi.json, from files the service serves itself (no CDN).
"use strict";
(function () {
  const el = document.getElementById("api-docs");
  const spec = el.dataset.spec;
  if (el.dataset.which === "swagger") {
    window.SwaggerUIBundle({
      url: spec,
      dom_id: "#api-docs",
      deepLinking: true,
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    });
  } else {
    window.Redoc.init(spec, { hideDownloadButton: false }, el);
  }
})();
