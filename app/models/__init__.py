"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.ledger import CreditLedgerEntry
from app.models.run import TaskRun
from app.models.task import Task
from app.models.user import ApiKey, User

__all__ = ["ApiKey", "CreditLedgerEntry", "Task", "TaskRun", "User"]
