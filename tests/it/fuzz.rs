//! Schema-driven fuzzing of the REST API (schemathesis against the served OpenAPI document).
