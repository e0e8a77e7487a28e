"""Run the Alembic migrations from code (the `agentsched migrate` command and test fixtures)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def migrations_root() -> Path:
    """Where alembic.ini and migrations/ are: the checkout, or for an installed package (the
    Docker image) the working directory."""
    for root in (PROJECT_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file() and (root / "migrations").is_dir():
            return root
    raise ConfigurationError(
        f"alembic.ini and migrations/ are neither in {PROJECT_ROOT} nor in the working directory"
    )


def alembic_config(database_url: str) -> Config:
    root = migrations_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")
