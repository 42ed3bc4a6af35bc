"""event hints sent by the writers, batched

Why: the insert trigger of `workflow_log` notified `amelia_events` once per event, and
PostgreSQL wakes every listening session on every such commit: with three listening
processes, event writes ran at about half their speed. Sessions that set
`amelia.event_hints = 'deferred'` (every Amelia server connection does, at connect) now
send the hints themselves after commit, many events per notification (see
amelia/server/database/event_hints.py); any other writer still notifies per row.

Revision ID: 84ba27347811
Revises: 86fedff9e449
Create Date: 2026-11-28 11:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "84ba27347811"
down_revision: str | Sequence[str] | None = "86fedff9e449"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # current_setting(..., true) is NULL when the session never set it: notify then.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION amelia_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('amelia.event_hints', true) IS DISTINCT FROM 'deferred' THEN
                PERFORM pg_notify('amelia_events', NEW.workflow_id::text || ':' || NEW.sequence);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION amelia_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('amelia_events', NEW.workflow_id::text || ':' || NEW.sequence);
            RETURN NULL;
        END
        $$
        """
    )
