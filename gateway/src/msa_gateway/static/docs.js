// Swagger UI for the gateway's aggregated /openapi.json. A file of its own, not an inline script: the gateway's
// Content-Security-Policy allows scripts from its own origin only (policy.py).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
