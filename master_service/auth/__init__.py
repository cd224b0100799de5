"""Logins for the dashboard and the API: users with a role, sessions, API tokens, throttling."""
