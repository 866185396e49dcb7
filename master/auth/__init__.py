"""Users, API tokens, dashboard sessions, permission checks and rate limits of the master."""
