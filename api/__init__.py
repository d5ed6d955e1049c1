"""The HTTP API: routes of the public contract, auth, problems, OpenAPI."""
