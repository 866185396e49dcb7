"""REST routes under /api, one module per resource."""
