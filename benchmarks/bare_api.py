"""The baseline API: a bare Litestar app whose one handler does one SQLAlchemy INSERT.

    python -m uvicorn benchmarks.bare_api:app --port 8001 --no-access-log --workers 1

`POST /bench/items` reads the JSON body, inserts it into `bench_items` in a worker thread (the
way `POST /api/agent/execute` does its work) and answers 202. Same engine settings as the API's
(`app.db.make_engine`: pool 20 + 20 overflow, pre-ping). `benchmarks/api_throughput.py` creates
the table in the benchmark database.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, post
from sqlalchemy import create_engine, text

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_items (
    id uuid PRIMARY KEY,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
_INSERT = text("INSERT INTO bench_items (id, body) VALUES (:id, CAST(:body AS jsonb))")

engine = create_engine(os.environ["DATABASE_URL"], pool_size=20, max_overflow=20, pool_pre_ping=True)


def _insert(body: bytes) -> uuid.UUID:
    item_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(_INSERT, {"id": item_id, "body": body.decode()})
    return item_id


@post("/bench/items")
async def create_item(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    body = await request.body()
    msgspec.json.decode(body)  # only JSON gets in, as in the API
    item_id = await anyio.to_thread.run_sync(_insert, body)
    return Response({"id": str(item_id), "status": "queued"}, status_code=202)


app = Litestar(route_handlers=[create_item], on_shutdown=[engine.dispose])
