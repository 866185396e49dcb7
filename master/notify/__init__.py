"""Telling people when jobs and sweeps end: signed webhooks, Slack payloads and email."""
