"""A real third-party matcher: examples/dbimport-loyalty, pip-installed, found by entry point.

The package is installed with `pip install --target` into a folder of the test's
own and reaches the worker through PYTHONPATH, exactly as an installed package
would (entry points are read from the path's `*.dist-info`), without changing
the shared virtual environment.
"""
from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from conftest import msg, worker_env
from dbimport.config import Settings

REPO = Path(__file__).resolve().parent.parent
PACKAGE_SRC = REPO / "examples" / "dbimport-loyalty"
WORKER = Path(sys.executable).with_name("dbimport-worker")
WORKER_TIMEOUT_S = 60


def package_version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE_SRC / "setup.cfg")
    return cfg["metadata"]["version"]


@pytest.fixture(scope="module")
def loyalty_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/dbimport-loyalty installed into a folder of its own."""
    root = tmp_path_factory.mktemp("loyalty")
    # Build from a copy: pip builds in the source tree, and the repository stays clean.
    src = shutil.copytree(PACKAGE_SRC, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return site




def dbimport_worker(site: Path, settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert WORKER.exists(), f"{WORKER} is missing: install dbimport into this environment"
    # cwd has no main.json: the environment alone configures the worker.
    return subprocess.run(
        [str(WORKER), *args], env=worker_env(settings, PYTHONPATH=str(site)), cwd=cwd,
        capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )


def declare_loyalty_card(settings: Settings, db_id: int = 1) -> None:
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO database_fields (db_id, name, type) VALUES (%s, 'loyalty_card', 'string')", (db_id,)
        )


def test_given_the_package_installed_when_cards_are_imported_then_one_profile_per_card(
    loyalty_site, harness, settings, tmp_path
):
    """Given dbimport-loyalty installed and loyalty_card declared for database 1,
    when a card is imported, then again spaced differently, and once without a card,
    then the first creates, the second updates the same profile, the third gets 400."""
    declare_loyalty_card(settings)
    harness.publish(
        msg(matching="loyalty", card_number="LC-0012 3456", data={"_fname": "Ann"}, feedback_id="join"),
        msg(matching="loyalty", card_number=" lc0012-34 56", data={"_lname": "Lee"}, feedback_id="again"),
        msg(matching="loyalty", data={"_fname": "Nobody"}, feedback_id="no-card"),
    )

    done = dbimport_worker(loyalty_site, settings, tmp_path, "run", "--until-empty")

    assert done.returncode == 0, done.stderr
    results = {r["feedback_id"]: r for r in harness.results()}
    assert results["join"]["error"] == 0, results["join"]
    assert results["join"]["matching_field"] == "card_number"
    assert results["again"]["error"] == 0, results["again"]
    assert results["again"]["profile_id"] == results["join"]["profile_id"]
    assert results["again"]["matching_field"] == "card_number"
    assert results["no-card"]["error"] == 400
    assert "card_number" in results["no-card"]["error_text"]
    assert results["no-card"]["profile_id"] == ""
    assert harness.rows("SELECT profile_id, fields FROM profiles") == [
        (results["join"]["profile_id"], {"loyalty_card": "LC00123456", "_fname": "Ann", "_lname": "Lee"})
    ]
    assert [k for (k,) in harness.rows("SELECT kind FROM events ORDER BY event_id")] == [
        "profile_created", "profile_updated"
    ]
    # The package's dbimport_events_committed hook ran in the worker, after commit.
    assert "dbimport-loyalty: 1 new member(s) in database 1" in Path(settings.log_path).read_text()


def test_given_loyalty_card_not_declared_when_a_card_is_imported_then_400_names_the_field(
    loyalty_site, harness, settings, tmp_path
):
    """Given the package installed but database 1 declaring no loyalty_card,
    when a card is imported, then 400 names loyalty_card and nothing is written."""
    harness.publish(msg(matching="loyalty", card_number="LC-0012 3456", feedback_id="undeclared"))

    done = dbimport_worker(loyalty_site, settings, tmp_path, "run", "--until-empty")

    assert done.returncode == 0, done.stderr
    [result] = harness.results()
    assert result["error"] == 400, result
    assert "loyalty_card" in result["error_text"]
    assert harness.count("SELECT count(*) FROM profiles") == 0


def test_given_the_package_installed_when_listing_matchers_then_it_names_mode_plugin_and_package(
    loyalty_site, settings, tmp_path
):
    """Given the package on the path, `dbimport-worker matchers` lists `loyalty`
    with its plugin and its package name and version; the shared environment
    itself stays without it."""
    done = dbimport_worker(loyalty_site, settings, tmp_path, "matchers")

    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert rows["loyalty"][1:4] == ["dbimport_loyalty", "dbimport-loyalty", package_version()]
    assert rows["email"][1:3] == ["dbimport.matchers.email", "dbimport"]  # the built-ins, as dbimport's
    assert importlib.util.find_spec("dbimport_loyalty") is None, "the install leaked into the shared venv"
