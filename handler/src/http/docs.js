// Starts Swagger UI on this server's own OpenAPI document. Requests made with "Try it out" go to
// the same origin (the document's server is /api); "Authorize" takes a bearer token from
// POST /api/auth/login. The validator badge is off: it would send the document to swagger.io.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
