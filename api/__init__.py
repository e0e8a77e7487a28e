"""The HTTP API: a thin Litestar adapter over `app.services`."""
