"""The bulk loader `dbimport-load`: files in, messages out, results and a report back."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest

from conftest import Harness
from dbimport.config import CONFIG_PATH_ENV, Settings
from dbimport.errors import ExitCode
from dbimport.loader import (
    Channel,
    LineSet,
    Load,
    Plan,
    UsageError,
    build_parser,
    count_rows,
    execute,
    make_plan,
    parse_map,
    summary,
)

EX_OK, EX_ROWS_FAILED, EX_USAGE = ExitCode.OK, ExitCode.PROBLEMS, ExitCode.USAGE
EX_UNAVAILABLE, EX_CONFIG = ExitCode.UNAVAILABLE, ExitCode.CONFIG

ROOT = Path(__file__).parent.parent
LOADER = ROOT / "bin" / "dbimport-load"


# --- building blocks -------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *rows: Any) -> Path:
    """One line per row: dicts as JSON, strings as they are (to write broken lines)."""
    lines = [r if isinstance(r, str) else orjson.dumps(r).decode() for r in rows]
    return write(path, "\n".join(lines) + "\n")


def plan(path: Path, *options: str) -> Plan:
    return make_plan(build_parser().parse_args([str(path), "--no-progress", *options]))


def load(settings: Settings, path: Path, *options: str) -> tuple[int, str, Path]:
    """Run the loader in this process: (exit code, stdout, report path)."""
    report = path.with_name(path.name + ".report.csv")
    out, err = io.StringIO(), io.StringIO()
    code = execute(plan(path, *options), settings, report, out=out, err=err)
    return code, out.getvalue(), report


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def queued(harness: Harness) -> list[tuple[pika.BasicProperties, dict[str, Any]]]:
    """Every message on the import queue, consumed."""
    out = []
    while True:
        method, props, body = harness.channel.basic_get(harness.settings.import_queue, auto_ack=True)
        if method is None:
            return out
        out.append((props, orjson.loads(body)))


def profiles(harness: Harness, db_id: int = 1) -> dict[str, dict[str, Any]]:
    return dict(harness.rows("SELECT email, fields FROM profiles WHERE db_id = %s", db_id))


# --- JSONL ------------------------------------------------------------------------------


def test_given_jsonl_when_loaded_then_each_row_becomes_a_profile(harness: Harness, tmp_path: Path) -> None:
    """A line with `data` is a whole message over the defaults; a line without is mapped like CSV."""
    path = jsonl(
        tmp_path / "people.jsonl",
        {"email": "ann@example.com", "data": {"_fname": "Ann"}, "feedback_id": "own-id"},
        {"email": "bob@example.com", "_fname": "Bob", "CRM_ID": 7},
        "",
        {"db_id": 2, "email": "cid@example.com", "data": {"CRM_ID": 9}},
    )

    code, out, _ = load(harness.settings, path, "--account-id", "1", "--db-id", "1")
    results = {r["feedback_id"]: r for r in harness.import_()}

    assert code == EX_OK
    assert "3 rows read, 3 published, 0 rejected" in out
    # feedback_id: the row's own, else file name and line (the blank line 3 still counts).
    assert set(results) == {"own-id", "people.jsonl:2", "people.jsonl:4"}
    assert all(r["error"] == 0 for r in results.values()), results
    assert profiles(harness) == {"ann@example.com": {"_fname": "Ann"}, "bob@example.com": {"_fname": "Bob", "CRM_ID": 7}}
    # The row's db_id overrode --db-id.
    assert profiles(harness, db_id=2) == {"cid@example.com": {"CRM_ID": 9}}


def test_each_row_is_a_persistent_json_message_with_ids_of_its_own(harness: Harness, tmp_path: Path) -> None:
    """Unique message_id per row, so the worker's redelivery check never confuses two equal rows."""
    path = jsonl(tmp_path / "same.jsonl", *[{"email": "same@example.com", "data": {}}] * 3)

    assert load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--batch", "2")[0] == EX_OK
    messages = queued(harness)

    assert [m["feedback_id"] for _, m in messages] == ["same.jsonl:1", "same.jsonl:2", "same.jsonl:3"]
    assert len({p.message_id for p, _ in messages}) == 3
    run_id = messages[0][0].correlation_id.rsplit(":", 1)[0]
    for (props, _), line in zip(messages, (1, 2, 3)):
        assert props.delivery_mode == 2 and props.content_type == "application/json"
        assert props.correlation_id == props.message_id == f"{run_id}:{line}"


def test_jsonl_rows_without_data_are_mapped_by_map_keeping_json_types(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", {"mail": "m@example.com", "first": "Mia", "crm": 5, "extra": "dropped"},
                 {"email": "n@example.com", "data": {"_fname": "Whole"}})

    load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--map", "email=mail,_fname=first,CRM_ID=crm")

    assert [(m["email"], m["data"]) for _, m in queued(harness)] == [
        ("m@example.com", {"_fname": "Mia", "CRM_ID": 5}),
        ("n@example.com", {"_fname": "Whole"}),  # a whole message: --map does not apply
    ]


def test_cli_defaults_reach_every_message(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"email": "x@example.com"})

    load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--matching", "email_sub",
         "--update-only", "--skip-triggers", "--resource-id", "24")

    assert [m for _, m in queued(harness)] == [{
        "account_id": 1, "db_id": 1, "matching": "email_sub", "resource_id": 24, "update_only": True,
        "skip_triggers": True, "email": "x@example.com", "data": {}, "feedback_id": "d.jsonl:1",
    }]


# --- CSV --------------------------------------------------------------------------------


def test_given_csv_and_a_map_when_loaded_then_mapped_columns_become_message_and_data(
    harness: Harness, tmp_path: Path
) -> None:
    path = write(tmp_path / "crm.csv", (
        'E-mail,First Name,"Name, Last",CRM,Tags,Ignored\n'
        'ann@example.com,Ann,Lee,12,"[""a"",""b""]",x\n'
        'bob@example.com,,"Smith, Jr.",13,,y\n'
    ))

    code, out, _ = load(harness.settings, path, "--account-id", "1", "--db-id", "1",
                        "--map", "email=E-mail,_fname=First Name,_lname=Name, Last",
                        "--map", "CRM_ID=CRM,interests:json=Tags")
    results = harness.import_()

    assert code == EX_OK, out
    assert [(r["feedback_id"], r["error"]) for r in results] == [("crm.csv:2", 0), ("crm.csv:3", 0)], results
    # An empty cell is left out (the stored value stays); unmapped columns are not sent.
    assert profiles(harness) == {
        "ann@example.com": {"_fname": "Ann", "_lname": "Lee", "CRM_ID": 12, "interests": ["a", "b"]},
        "bob@example.com": {"_lname": "Smith, Jr.", "CRM_ID": 13},
    }


def test_given_csv_without_a_map_then_headers_are_used_as_they_are(harness: Harness, tmp_path: Path) -> None:
    path = write(tmp_path / "plain.csv", "account_id,db_id,email,update_only,_city\n1,1,c@example.com,no,Berlin\n")

    assert load(harness.settings, path)[0] == EX_OK

    assert [m for _, m in queued(harness)] == [{
        "account_id": 1, "db_id": 1, "email": "c@example.com", "update_only": False,
        "data": {"_city": "Berlin"}, "feedback_id": "plain.csv:2",
    }]


def test_set_gives_every_row_a_value_so_custom_matching_needs_only_the_value_column(
    harness: Harness, tmp_path: Path
) -> None:
    """Given a profile with CRM_ID 12, when a CSV of CRM ids is loaded with --matching custom
    and --set field_name=CRM_ID, then that profile is updated; --set data fields reach it too."""
    created = harness.import_({"account_id": 1, "db_id": 1, "email": "crm@example.com", "data": {"CRM_ID": 12}})
    path = write(tmp_path / "crm-update.csv", "CRM,City\n12,Berlin\n")

    code, out, _ = load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--matching", "custom",
                        "--update-only", "--set", "field_name=CRM_ID", "--set", "_country=DE",
                        "--map", "field_value=CRM,_city=City")
    results = harness.import_()

    assert code == EX_OK, out
    assert [(r["error"], r["profile_id"]) for r in results] == [(0, created[0]["profile_id"])], results
    assert profiles(harness) == {"crm@example.com": {"CRM_ID": 12, "_city": "Berlin", "_country": "DE"}}


def test_a_mapped_column_missing_from_the_header_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "Email\nx@example.com\n")

    with pytest.raises(UsageError, match="no column 'E-mail'"):
        plan(path, "--map", "email=E-mail")


# --- bad rows ---------------------------------------------------------------------------


def test_bad_rows_go_to_the_report_and_the_rest_load(harness: Harness, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.csv", (
        "email,db_id,_fname\n"
        "good@example.com,1,Good\n"
        "short@example.com,1\n"
        "text-db@example.com,one,Bad\n"
        "also-good@example.com,,Also\n"
    ))

    code, out, report = load(harness.settings, path, "--account-id", "1", "--db-id", "1")
    results = harness.import_()

    assert code == EX_ROWS_FAILED
    assert "4 rows read, 2 published, 2 rejected" in out
    assert sorted(r["feedback_id"] for r in results) == ["mixed.csv:2", "mixed.csv:5"]
    assert [(r["line"], r["error"], r["error_text"], r["email"]) for r in report_rows(report)] == [
        ("3", "rejected", "has 2 fields, the header has 3", "short@example.com"),
        ("4", "rejected", "db_id: 'one' is not an integer", "text-db@example.com"),
    ]


def test_bad_jsonl_lines_are_reported_with_their_text(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "bad.jsonl", {"email": "ok@example.com"}, "{not json", "[1]",
                 {"email": "nodb@example.com", "data": {}, "db_id": None})

    code, _, report = load(harness.settings, path, "--account-id", "1", "--db-id", "1")

    assert code == EX_ROWS_FAILED
    assert len(queued(harness)) == 1
    rows = report_rows(report)
    assert [(r["line"], r["row"]) for r in rows] == [
        ("2", "{not json"), ("3", "[1]"), ("4", '{"email":"nodb@example.com","data":{},"db_id":null}')]
    assert rows[0]["error_text"].startswith("not valid JSON")
    assert rows[2]["error_text"] == "no db_id: give --db-id or a column for it"


# --- --wait -----------------------------------------------------------------------------


def test_wait_collects_results_prints_a_summary_and_reports_failures(harness: Harness, tmp_path: Path) -> None:
    """Given rows that succeed, fail at the worker, and fail to parse; when loaded with --wait
    (the worker runs between publishing and collecting), then the summary counts each kind and
    the report holds every failed row with its error and original columns."""
    path = write(tmp_path / "people.csv", (
        "email,_fname,update_only,CRM_ID\n"
        "new@example.com,New,,1\n"
        "ghost@example.com,Ghost,true,2\n"
        "typo@example.com,Typo,,not-a-number\n"
        "broken@example.com,Broken\n"
        "new@example.com,Again,,1\n"
    ))
    the_plan = plan(path, "--account-id", "1", "--db-id", "1", "--wait", "--timeout", "5")
    load = Load(the_plan, harness.settings, err=io.StringIO())
    report = tmp_path / "failed.csv"

    load.start()
    load.publish_all()
    harness.run()
    load.collect()
    lines = summary(the_plan, load.tally, report, load.finish(report))
    load.close()

    assert lines == [
        "people.csv: 5 rows read, 4 published, 1 rejected",
        "results: 2 ok (created or updated), errors by code: 400: 1, 404: 1; 0 unanswered",
        f"report: {report} (3 failed rows)",
    ]
    rows = report_rows(report)
    assert [(r["line"], r["feedback_id"], r["error"], r["email"], r["_fname"]) for r in rows] == [
        ("3", "people.csv:3", "404", "ghost@example.com", "Ghost"),
        ("4", "people.csv:4", "400", "typo@example.com", "Typo"),
        ("5", "people.csv:5", "rejected", "broken@example.com", "Broken"),
    ]
    assert "CRM_ID" in rows[1]["error_text"]
    # The guide shows this very report.
    assert report.read_text().replace("\r\n", "\n") in (ROOT / "docs" / "loader.md").read_text()
    assert harness.queue_depth(harness.settings.result_queue) == 0


def test_wait_leaves_other_publishers_results_on_the_queue(harness: Harness, tmp_path: Path) -> None:
    """Results whose correlation_id is not this run's are requeued, not acked."""
    theirs = [(f"load-someoneelse:{n}", orjson.dumps({"error": 0, "feedback_id": f"theirs:{n}"})) for n in (1, 2)]
    for correlation_id, body in theirs:
        harness.channel.basic_publish("", harness.settings.result_queue, body,
                                      pika.BasicProperties(correlation_id=correlation_id, delivery_mode=2))
    harness.channel.basic_publish("", harness.settings.result_queue, b'{"error":0}',
                                  pika.BasicProperties(delivery_mode=2))  # no correlation_id at all
    path = jsonl(tmp_path / "mine.jsonl", {"email": "mine@example.com"})
    the_plan = plan(path, "--account-id", "1", "--db-id", "1", "--wait", "--timeout", "5")
    load = Load(the_plan, harness.settings, err=io.StringIO())

    load.start()
    load.publish_all()
    harness.run()
    load.collect()
    load.close()

    assert (load.tally.ok, load.outstanding.count) == (1, 0)
    left = harness.result_messages()
    assert sorted((p.correlation_id or "", body) for p, body in left) == sorted([("", b'{"error":0}'), *theirs])


def test_wait_reports_rows_unanswered_within_the_timeout(harness: Harness, tmp_path: Path) -> None:
    """No worker runs: after --timeout seconds without a result, the rows are reported unanswered."""
    path = jsonl(tmp_path / "alone.jsonl", {"email": "a@example.com"}, {"email": "b@example.com", "feedback_id": "b"})

    started = time.monotonic()
    code, out, report = load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--wait", "--timeout", "0.5")

    assert code == EX_ROWS_FAILED
    assert time.monotonic() - started < 5
    assert "0 ok (created or updated), errors by code: none; 2 unanswered" in out
    assert [(r["line"], r["feedback_id"], r["error"]) for r in report_rows(report)] == [
        ("1", "alone.jsonl:1", "unanswered"), ("2", "b", "unanswered")]


def test_a_result_queue_with_other_arguments_is_used_as_it_is(harness: Harness, tmp_path: Path) -> None:
    """The result queue exists with another TTL (RabbitMQ answers 406): a warning, not a crash."""
    path = jsonl(tmp_path / "ttl.jsonl", {"email": "ttl@example.com"})
    the_plan = plan(path, "--account-id", "1", "--db-id", "1", "--wait", "--timeout", "5")
    err = io.StringIO()
    load = Load(the_plan, harness.settings.replace(result_ttl_s=60), err=err)

    load.start()
    load.publish_all()
    harness.run()
    load.collect()
    load.close()

    assert load.tally.ok == 1
    assert f"queue {harness.settings.result_queue!r} exists with other arguments" in err.getvalue()


# --- resuming and checking --------------------------------------------------------------


def test_from_line_skips_the_rows_before_it(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "resume.jsonl", *({"email": f"p{n}@example.com"} for n in range(1, 6)))

    code, out, _ = load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--from-line", "4")

    assert code == EX_OK and "2 rows read, 2 published" in out
    assert [m["email"] for _, m in queued(harness)] == ["p4@example.com", "p5@example.com"]


def test_dry_run_checks_every_row_and_publishes_nothing(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "dry.jsonl", {"email": "a@example.com"}, "oops")

    code, out, report = load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--dry-run")

    assert code == EX_ROWS_FAILED
    assert "2 rows read, 1 published (dry run: nothing sent), 1 rejected" in out
    assert [r["line"] for r in report_rows(report)] == ["2"]
    assert harness.queue_depth(harness.settings.import_queue) == 0


def test_a_broker_lost_mid_load_exits_69_naming_the_line_to_resume_from(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the connection drops after the first committed batch, the loader stops with 69 and
    says where to resume; resuming from there sends the rest and nothing twice."""
    path = jsonl(tmp_path / "drop.jsonl", *({"email": f"d{n}@example.com"} for n in range(1, 7)))
    publish = Channel.publish

    def publish_then_drop(self: Channel, batch: Any) -> list[int]:
        returned = publish(self, batch)
        self._connection.close()  # the next batch finds the connection gone
        return returned

    monkeypatch.setattr(Channel, "publish", publish_then_drop)
    report = tmp_path / "drop.report.csv"
    err = io.StringIO()
    code = execute(plan(path, "--account-id", "1", "--db-id", "1", "--batch", "2"), harness.settings, report,
                   out=io.StringIO(), err=err)
    monkeypatch.undo()

    assert code == EX_UNAVAILABLE
    assert "committed through line 2; resume with --from-line 3" in err.getvalue()
    assert load(harness.settings, path, "--account-id", "1", "--db-id", "1", "--from-line", "3")[0] == EX_OK
    assert [m["feedback_id"] for _, m in queued(harness)] == [f"drop.jsonl:{n}" for n in range(1, 7)]


# --- the command line -------------------------------------------------------------------


def loader_env(tmp_path: Path, settings: Settings, **extra: str) -> dict[str, str]:
    config = write(tmp_path / "main.json", orjson.dumps({
        "RABBITMQ_HOST": settings.rabbitmq_host, "RABBITMQ_PORT": settings.rabbitmq_port,
        "IMPORT_QUEUE": settings.import_queue, "IMPORT_RESULT_QUEUE": settings.result_queue,
    }).decode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "IMPORT_"))}
    return {**env, CONFIG_PATH_ENV: str(config), **extra}


def run_loader(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(LOADER), *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli_wait_end_to_end_exits_1_with_the_summary_and_report(harness: Harness, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "cli.jsonl", {"email": "one@example.com"}, {"email": "two@example.com", "update_only": True})
    loader = run_loader(str(path), "--account-id", "1", "--db-id", "1", "--wait", "--timeout", "10",
                        env=loader_env(tmp_path, harness.settings), cwd=tmp_path)
    deadline = time.monotonic() + 10
    while harness.queue_depth(harness.settings.import_queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    harness.run()
    out, err = loader.communicate(timeout=15)

    assert loader.returncode == EX_ROWS_FAILED, err
    assert "results: 1 ok (created or updated), errors by code: 404: 1; 0 unanswered" in out
    assert [(r["line"], r["error"]) for r in report_rows(tmp_path / "cli.jsonl.report.csv")] == [("2", "404")]


@pytest.mark.parametrize("args, extra, code, says", [
    (["people.txt"], {}, EX_USAGE, "--format"),
    (["people.jsonl", "--db-id", "one"], {}, EX_USAGE, "not an integer"),
    (["people.jsonl", "--map", "data=x"], {}, EX_USAGE, "not a message key"),
    (["people.jsonl"], {"RABBITMQ_PORT": "nope"}, EX_CONFIG, "RABBITMQ_PORT"),
    (["people.jsonl"], {"RABBITMQ_PORT": "1", "IMPORT_CONNECT_TIMEOUT_S": "1"}, EX_UNAVAILABLE, "RabbitMQ connect"),
])
def test_cli_exit_codes(settings: Settings, tmp_path: Path, args: list[str], extra: dict[str, str],
                        code: int, says: str) -> None:
    jsonl(tmp_path / "people.jsonl", {"email": "a@example.com"})
    write(tmp_path / "people.txt", "")
    loader = run_loader(*args, env=loader_env(tmp_path, settings, **extra), cwd=tmp_path)
    _out, err = loader.communicate(timeout=30)

    assert loader.returncode == code
    assert says in err


# --- the pieces -------------------------------------------------------------------------


def test_map_pieces_without_equals_continue_the_column_name() -> None:
    pairs = parse_map(["email=E-mail,_lname=Name, Last,tags:json=T"])

    assert [(t.name, t.as_json, column) for t, column in pairs] == [
        ("email", False, "E-mail"), ("_lname", False, "Name, Last"), ("tags", True, "T")]


def test_line_set_counts_adds_and_discards() -> None:
    lines = LineSet()
    for n in (1, 8, 9, 1_000_000, 8):
        lines.add(n)

    assert lines.count == 4 and 1_000_000 in lines and 7 not in lines
    assert lines.discard(8) and not lines.discard(8) and not lines.discard(5_000_000)
    assert lines.count == 3 and 8 not in lines


def test_count_rows_counts_lines_with_or_without_a_final_newline(tmp_path: Path) -> None:
    assert count_rows(write(tmp_path / "a.csv", "h\n1\n2\n"), header=True) == 2
    assert count_rows(write(tmp_path / "b.jsonl", "{}\n{}"), header=False) == 2
    assert count_rows(write(tmp_path / "c.jsonl", ""), header=False) == 0
