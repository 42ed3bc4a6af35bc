"""`python -m bench [suite ...]`: run benchmarks and write the results files.

Suites: repositories, checkpoints, api, cluster (default: all). The database server is
AMELIA_BENCH_DATABASE_URL, else AMELIA_TEST_DATABASE_URL, else testcontainers or the
embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile

from bench import report
from bench.common import bench_database, machine_facts, save_section
from bench.seed import seed

SUITES = ("repositories", "checkpoints", "api", "cluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    args = parser.parse_args(argv)
    suites = args.suites or list(SUITES)
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    facts_version: str | None = None
    if "repositories" in suites or "api" in suites:
        with bench_database() as url:
            print("seeding 100k workflows, 1M token rows, 200k events ...", flush=True)
            seeded = asyncio.run(seed(url))
            save_section("seed", seeded)
            print(f"seeded in {sum(seeded.values()):.0f} s", flush=True)
            if "repositories" in suites:
                from bench import repositories

                print("timing repository calls ...", flush=True)
                section = asyncio.run(repositories.run(url))
                save_section("repositories", section)
                facts_version = section.get("server_version")
            if "api" in suites:
                from bench import api

                print("loading the HTTP API ...", flush=True)
                with tempfile.TemporaryDirectory() as scratch:
                    save_section("api", api.run(url, scratch))
    if "checkpoints" in suites:
        from bench import checkpoints

        with bench_database() as url:
            print("timing checkpoint writes and reads ...", flush=True)
            save_section("checkpoints", asyncio.run(checkpoints.run(url)))
        from bench import checkpoint_growth

        with bench_database() as url, tempfile.TemporaryDirectory() as scratch:
            print("measuring checkpoint growth ...", flush=True)
            save_section("checkpoint_growth", asyncio.run(checkpoint_growth.run(url, scratch)))
    if "cluster" in suites:
        from bench import cluster

        with bench_database() as url:
            print("claims and cross-process events ...", flush=True)
            save_section("cluster", asyncio.run(cluster.run(url)))
    save_section("machine", machine_facts(facts_version))
    report.write()
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
