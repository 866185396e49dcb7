"""Routes: webhooks."""

from __future__ import annotations

from fastapi import APIRouter

from master.api.errors import documented

router = APIRouter(tags=["webhooks"], responses=documented(400, 401, 403, 404, 409, 422, 503))
