"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.dashboard import DashboardSession
from app.models.idempotency import IdempotencyKey
from app.models.ledger import CreditLedgerEntry
from app.models.run import TaskRun
from app.models.step import RunStep
from app.models.task import Task
from app.models.user import ApiKey, User
from app.models.webhook import WebhookDelivery

__all__ = [
    "ApiKey",
    "CreditLedgerEntry",
    "DashboardSession",
    "IdempotencyKey",
    "RunStep",
    "Task",
    "TaskRun",
    "User",
    "WebhookDelivery",
]
