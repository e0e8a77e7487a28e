"""The one-script batch enqueue stores exactly what Dramatiq's own enqueue stores."""

from __future__ import annotations

import uuid

import dramatiq

from actors.sending import enqueue_runs, message_json
from app.services.dispatch import Dispatch, actor_name, queue_name


def _dramatiq_bytes(priority: str, run_id: str, message_id: str, timestamp_ms: int) -> bytes:
    return dramatiq.Message(
        queue_name=queue_name(priority),
        actor_name=actor_name(priority),
        args=(run_id,),
        kwargs={},
        options={"redis_message_id": message_id},
        message_id=message_id,
        message_timestamp=timestamp_ms,
    ).encode()


def test_the_template_is_byte_for_byte_dramatiqs_encoding():
    run_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    for priority in ("urgent", "high", "medium", "low"):
        expected = _dramatiq_bytes(priority, run_id, message_id, 1764579600123)
        assert (
            message_json(queue_name(priority), actor_name(priority), run_id, message_id, 1764579600123)
            == expected
        )


def test_a_batch_lands_in_each_queue_and_its_hash_as_dramatiq_would_put_it(redis_client):
    from actors import broker

    dispatches = [
        Dispatch(
            uuid.uuid4(),
            ("urgent", "high", "medium", "low")[i % 4],
            message_id=str(uuid.uuid4()) if i % 2 else None,
        )
        for i in range(2_500)  # more than one unpack chunk per queue
    ]
    sent = enqueue_runs(broker, dispatches)
    assert [run_id for run_id, _ in sent] == [d.run_id for d in dispatches]
    for dispatch, (_, message_id) in zip(dispatches, sent, strict=True):
        if dispatch.message_id is not None:
            assert message_id == dispatch.message_id
    for priority in ("urgent", "high", "medium", "low"):
        queue = queue_name(priority)
        ids = [m.decode() for m in redis_client.lrange(f"dramatiq:{queue}", 0, -1)]
        expected_ids = [mid for d, (_, mid) in zip(dispatches, sent, strict=True) if d.priority == priority]
        assert ids == expected_ids  # FIFO within a queue
        stored = redis_client.hget(f"dramatiq:{queue}.msgs", ids[0])
        message = dramatiq.Message.decode(stored)
        assert stored == _dramatiq_bytes(priority, message.args[0], ids[0], message.message_timestamp)
        assert message.options == {"redis_message_id": ids[0]}
