"""Clusters left running by a killed run are stopped and deleted when the next run starts."""

from __future__ import annotations

import subprocess
import time

from tests.reliability.owned_pg import (
    OWNER_FILE,
    OwnedPostgres,
    process_started_at,
    remove_stale_clusters,
)


def test_clusters_whose_run_is_gone_are_stopped_and_removed(owned_pg: OwnedPostgres) -> None:
    # A cluster as a killed pytest leaves it: running, its owner process gone.
    stale = OwnedPostgres()
    finished = subprocess.Popen(["true"])
    finished.wait()
    (stale.directory / OWNER_FILE).write_text(f"{finished.pid} 0\n")
    try:
        stale.server.start()
        pid_file = stale.server.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().splitlines()[0])
        assert process_started_at(postmaster) is not None

        removed = remove_stale_clusters()

        assert stale.directory in removed
        assert not stale.directory.exists()
        deadline = time.monotonic() + 10  # pg_ctl returns as it exits
        while process_started_at(postmaster) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_started_at(postmaster) is None, "its postmaster was stopped"
        # The cluster of this run (its owner, this process, is alive) is left alone.
        assert owned_pg.directory not in removed
        assert owned_pg.server.is_running()
    finally:
        if stale.directory.exists():
            stale.destroy()
