"""Field actions (docs/contract.md, "Field actions"): set, unset, incr, add, delete and
upsert on every field type the contract allows them on, a 400 naming the field for every
other combination, exact composition in queue order, and trigger events."""
from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Harness, msg, ok
from faults.processes import WorkerProcess, crash_at_batch, log_lines, wait_for, worker_env

DRAIN_TIMEOUT_S = 180.0

# The contract's table: which field types each action applies to.
ALLOWED = {
    "incr": {"int", "float"},
    "add": {"tags", "arr_object", "phones"},
    "delete": {"tags", "arr_object", "phones"},
    "upsert": {"object", "arr_object"},
}
# Profile fields: name -> its type (a system field's, a declared one's, or phones/email).
PROFILE_FIELDS = {
    "_fname": "string", "_bdate": "date", "_status": "int", "email": "email", "phones": "phones",
    "CRM_ID": "int", "score": "float", "nickname": "string", "vip": "bool", "since": "date", "tier": "list",
    "last_ip": "ip", "interests": "tags", "prefs": "object", "orders": "arr_object",
}
# Subscription custom fields of resource 24: the seed's two, and more declared by the tests.
SUBSCRIPTION_FIELDS = {
    "loyalty_card": "string", "level": "int", "ratio": "float", "badges": "tags", "meta": "object",
    "history": "arr_object",
}
EXTRA_RESOURCE_FIELDS = [("ratio", "float"), ("badges", "tags"), ("meta", "object"), ("history", "arr_object")]
# A well-formed operand for each action (right for some type, the point being the type).
OPERANDS: dict[str, dict[str, Any]] = {
    "incr": {"action": "incr", "value": 1},
    "add": {"action": "add", "value": ["x"]},
    "delete": {"action": "delete", "value": ["x"]},
    "upsert": {"action": "upsert", "submatch": "id", "value": {"id": 1}},
}


def declare_resource_fields(harness: Harness) -> None:
    for name, type_ in EXTRA_RESOURCE_FIELDS:
        harness.rows(
            "INSERT INTO resource_fields (account_id, resource_id, name, type) VALUES (1, 24, %s, %s) RETURNING 1",
            name, type_,
        )


def action(name: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"action": name}
    if name != "unset":
        doc["value"] = value
    doc.update(extra)
    return doc


@dataclass
class Case:
    """One field holding `before`, a message writing `given` into it, and what it then holds."""

    field: str
    before: Any
    given: Any
    after: Any  # ABSENT: the field is removed
    on_subscription: bool = False
    id: str = ""

    def email(self) -> str:
        return f"{self.id}@example.com"


ABSENT = object()


def profile_cases() -> Iterator[Case]:
    yield Case("_fname", "Ann", action("set", "Bob"), "Bob")
    yield Case("_fname", "Ann", action("unset"), ABSENT)
    yield Case("_bdate", "1990-01-02", action("set", "1991-03-04"), "1991-03-04")
    yield Case("_status", 5, action("incr", 2), 7)
    yield Case("_status", 5, action("incr", -7), -2)
    yield Case("_status", None, action("incr", 4), 4)  # an absent field counts as 0
    yield Case("_status", 5, action("unset"), ABSENT)
    yield Case("email", None, action("set", "New@Example.com"), "new@example.com")
    yield Case("phones", ["+79000000001"], action("add", ["+7 900 000-00-02", "+79000000001"]),
               ["+79000000001", "+79000000002"])
    yield Case("phones", ["+79000000001", "+79000000002"], action("delete", ["+79000000001", "+79000000009"]),
               ["+79000000002"])
    yield Case("phones", ["+79000000001"], action("set", ["+79000000003"]), ["+79000000003"])
    yield Case("phones", ["+79000000001"], action("unset"), [])
    yield Case("CRM_ID", 10, action("incr", 5), 15)
    yield Case("CRM_ID", 10, action("set", 3), 3)
    yield Case("CRM_ID", 10, action("unset"), ABSENT)
    yield Case("score", 1.5, action("incr", 0.25), 1.75)
    yield Case("score", 0.1, action("incr", 0.2), 0.3)  # decimal, not binary, addition
    yield Case("score", None, action("incr", 2), 2.0)
    yield Case("nickname", "Jo", action("set", "Jay"), "Jay")
    yield Case("nickname", "Jo", action("unset"), ABSENT)
    yield Case("vip", True, action("set", False), False)
    yield Case("since", "2020-01-01", action("unset"), ABSENT)
    yield Case("tier", "gold", action("set", "silver"), "silver")
    yield Case("last_ip", "10.0.0.1", action("set", "10.0.0.2"), "10.0.0.2")
    yield Case("interests", ["a", "b"], action("add", "b, c | d"), ["a", "b", "c", "d"])
    yield Case("interests", ["a", "b"], action("add", ["a"]), ["a", "b"])  # present: nothing added
    yield Case("interests", ["a", "b", "c"], action("delete", ["a", "z"]), ["b", "c"])
    yield Case("interests", None, action("add", ["x", "x"]), ["x"])
    yield Case("interests", ["a"], action("set", "p; q"), ["p", "q"])
    yield Case("prefs", {"x": 1}, action("upsert", 2, submatch="y.z"), {"x": 1, "y": {"z": 2}})
    yield Case("prefs", {"x": 1, "y": 5}, action("upsert", 2, submatch="y.z"), {"x": 1, "y": {"z": 2}})
    yield Case("prefs", None, action("upsert", [1], submatch="list"), {"list": [1]})
    # An object that is no action is a plain object value; `set` stores even an action-like one.
    yield Case("prefs", {"x": 1}, {"action": "later", "at": 5}, {"action": "later", "at": 5})
    yield Case("prefs", {"x": 1}, action("set", {"action": "incr", "value": 1}), {"action": "incr", "value": 1})
    yield Case("orders", [{"id": 1, "n": 1}], action("add", [{"id": 2}, {"id": 1, "n": 1}]),
               [{"id": 1, "n": 1}, {"id": 2}])
    yield Case("orders", [{"id": 1, "n": 1}, {"id": 2}], action("delete", [{"id": 1, "n": 1}, {"id": 9}]), [{"id": 2}])
    yield Case("orders", [{"id": 1, "n": 1, "k": "a"}, {"id": 2}], action("upsert", {"id": 1, "n": 5}, submatch="id"),
               [{"id": 1, "n": 5, "k": "a"}, {"id": 2}])
    yield Case("orders", [{"id": 1}], action("upsert", {"id": 3, "n": 1}, submatch="id"), [{"id": 1}, {"id": 3, "n": 1}])
    yield Case("orders", [{"s": {"k": 1}, "v": 0}, {"s": {"k": 2}}], action("upsert", {"s": {"k": 1}, "v": 9},
               submatch="s.k"), [{"s": {"k": 1}, "v": 9}, {"s": {"k": 2}}])
    yield Case("orders", [{"id": 1}], action("unset"), ABSENT)


def subscription_cases() -> Iterator[Case]:
    yield Case("loyalty_card", "A1", action("set", "B2"), "B2", on_subscription=True)
    yield Case("loyalty_card", "A1", action("unset"), ABSENT, on_subscription=True)
    yield Case("level", 3, action("incr", 2), 5, on_subscription=True)
    yield Case("level", None, action("incr", 2), 2, on_subscription=True)
    yield Case("ratio", 0.5, action("incr", 0.25), 0.75, on_subscription=True)
    yield Case("badges", ["a"], action("add", ["b", "a"]), ["a", "b"], on_subscription=True)
    yield Case("badges", ["a", "b"], action("delete", "a"), ["b"], on_subscription=True)
    yield Case("meta", {"a": 1}, action("upsert", True, submatch="b.c"), {"a": 1, "b": {"c": True}},
               on_subscription=True)
    yield Case("history", [{"d": "x"}], action("add", [{"d": "y"}]), [{"d": "x"}, {"d": "y"}], on_subscription=True)
    yield Case("history", [{"d": "x"}, {"d": "y"}], action("delete", [{"d": "x"}]), [{"d": "y"}],
               on_subscription=True)
    yield Case("history", [{"d": "x", "n": 1}], action("upsert", {"d": "x", "n": 2}, submatch="d"),
               [{"d": "x", "n": 2}], on_subscription=True)


VALID = [
    Case(c.field, c.before, c.given, c.after, c.on_subscription, id=f"valid-{i}-{c.field}")
    for i, c in enumerate(itertools.chain(profile_cases(), subscription_cases()))
]


def subscription(email: str, custom_fields: dict[str, Any]) -> dict[str, Any]:
    return {"resource_id": 24, "channel": "email", "email": email, "custom_fields": custom_fields}


def setup_message(case: Case) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if case.on_subscription:
        data["subscriptions"] = [subscription(case.email(), {} if case.before is None else {case.field: case.before})]
    elif case.before is not None:
        data[case.field] = case.before
    return msg(email=case.email(), data=data, feedback_id=f"setup-{case.id}")


def action_message(case: Case) -> dict[str, Any]:
    if case.on_subscription:
        data: dict[str, Any] = {"subscriptions": [subscription(case.email(), {case.field: case.given})]}
    else:
        data = {case.field: case.given}
    # email_profile finds the profile by its e-mail even where the action changes it.
    return msg(matching="email_profile", email=case.email(), data=data, feedback_id=case.id)


def stored(harness: Harness, case: Case, profile_id: str) -> Any:
    if case.on_subscription:
        [(custom,)] = harness.rows(
            "SELECT custom_fields FROM subscriptions WHERE profile_id = %s AND resource_id = 24", profile_id)
        return custom.get(case.field, ABSENT)
    [(email, phones, fields)] = harness.rows(
        "SELECT email, phones, fields FROM profiles WHERE profile_id = %s", profile_id)
    if case.field == "email":
        return email
    if case.field == "phones":
        return phones
    return fields.get(case.field, ABSENT)


def test_each_action_does_what_the_contract_says_on_each_type_it_fits(harness: Harness) -> None:
    """Given fields holding `before` (one profile a case), a message whose data holds an
    action for the field leaves it holding `after`: for system fields, phones, e-mail,
    every declared type, and subscriptions' custom fields."""
    declare_resource_fields(harness)
    setups = ok(harness.import_(*(setup_message(c) for c in VALID)))
    answers = ok(harness.import_(*(action_message(c) for c in VALID)))
    wrong = []
    for case, setup, answer in zip(VALID, setups, answers):
        assert answer["profile_id"] == setup["profile_id"], case
        value = stored(harness, case, answer["profile_id"])
        if value != case.after:
            wrong.append((case.id, case.before, case.given, "expected", case.after, "got", value))
    assert not wrong, wrong


# --- every other combination is a 400 naming the field, with nothing written ----------------


@dataclass
class Refused:
    field: str
    given: Any
    says: str
    on_subscription: bool = False
    id: str = ""


def refused_cases() -> Iterator[Refused]:
    for (name, type_), (act, operand) in itertools.product(PROFILE_FIELDS.items(), OPERANDS.items()):
        if type_ not in ALLOWED[act]:
            yield Refused(name, operand, f"the {act} action does not fit")
    for (name, type_), (act, operand) in itertools.product(SUBSCRIPTION_FIELDS.items(), OPERANDS.items()):
        if type_ not in ALLOWED[act]:
            yield Refused(name, operand, f"the {act} action does not fit", on_subscription=True)
    yield Refused("email", action("unset"), "cannot be unset")
    yield Refused("CRM_ID", {"action": "increment", "value": 1}, "unknown action 'increment'")
    yield Refused("orders", {"action": "append", "value": [{}]}, "unknown action 'append'")
    yield Refused("CRM_ID", {"action": "incr"}, "needs a value")
    yield Refused("_fname", {"action": "set"}, "needs a value")
    yield Refused("CRM_ID", action("incr", "1"), "must be an integer")
    yield Refused("CRM_ID", action("incr", 1.5), "must be an integer")
    yield Refused("CRM_ID", action("incr", True), "must be an integer")
    yield Refused("score", action("incr", "0.5"), "must be a number")
    yield Refused("level", action("incr", 0.5), "must be an integer", on_subscription=True)
    yield Refused("interests", action("add", 5), "must be a list of strings")
    yield Refused("orders", action("add", {"id": 1}), "must be a list")
    yield Refused("orders", action("add", [1, 2]), "must be a list of JSON objects")
    yield Refused("phones", action("add", ["not a phone"]), "phone number")
    yield Refused("phones", action("delete", "+79000000001"), "must be a list")
    yield Refused("prefs", action("upsert", 1), "needs a submatch")
    yield Refused("prefs", action("upsert", 1, submatch="a..b"), "needs a submatch")
    yield Refused("orders", action("upsert", [1], submatch="id"), "must be an object")
    yield Refused("orders", action("upsert", {"n": 1}, submatch="id"), "holds nothing at 'id'")
    yield Refused("CRM_ID", action("unset") | {"value": 3}, "takes no value")
    yield Refused("CRM_ID", action("incr", 1, submatch="x"), "not a key of a incr action")
    yield Refused("tier", action("set", "bronze"), "must be one of gold, silver")
    yield Refused("subscriptions", action("add", []), "does not fit")


REFUSED = [
    Refused(r.field, r.given, r.says, r.on_subscription, id=f"refused-{i}-{r.field}")
    for i, r in enumerate(refused_cases())
]


def refused_message(case: Refused) -> dict[str, Any]:
    email = f"{case.id}@example.com"
    if case.on_subscription:
        data: dict[str, Any] = {"subscriptions": [subscription(email, {case.field: case.given})]}
    else:
        data = {case.field: case.given, "_lname" if case.field == "_fname" else "_fname": "untouched?"}
    return msg(email=email, data=data, feedback_id=case.id)


def test_every_other_combination_is_a_400_naming_the_field_and_the_profile_is_untouched(harness: Harness) -> None:
    """Given each profile holding `_fname` Ann, a message with an action that does not fit
    its field's type, or a malformed one, is answered 400 naming the field, and the profile
    keeps what it held (the message's other fields are not written either)."""
    declare_resource_fields(harness)
    setups = ok(harness.import_(*(msg(email=f"{c.id}@example.com", data={"_fname": "Ann"}) for c in REFUSED)))
    answers = harness.import_(*(refused_message(c) for c in REFUSED))
    wrong = []
    for case, answer in zip(REFUSED, answers):
        path = (f"data.subscriptions[0].custom_fields.{case.field}" if case.on_subscription
                else f"data.{case.field}")
        if answer["error"] != 400 or path not in answer["error_text"] or case.says not in answer["error_text"]:
            wrong.append((case.id, case.given, answer["error"], answer["error_text"]))
    assert not wrong, wrong
    fields = dict(harness.rows("SELECT profile_id, fields FROM profiles"))
    assert all(fields[s["profile_id"]] == {"_fname": "Ann"} for s in setups)
    assert harness.count("SELECT count(*) FROM subscriptions") == 0


# --- composition in queue order ---------------------------------------------------------------


def test_set_incr_set_incr_in_one_batch_gives_what_the_queue_order_implies(harness: Harness) -> None:
    """Several messages for one profile in one batch apply in queue order: set 5, incr 1,
    set 10, incr 2 leaves 12; on another profile holding 100, incr 1, set 7, incr 3 leaves
    10; incr 1 then incr 2 on a third, holding 40, leaves 43; all in one batch."""
    ok(harness.import_(msg(email="b@example.com", data={"CRM_ID": 100}), msg(email="c@example.com", data={"CRM_ID": 40})))
    stream = [
        msg(email="a@example.com", data={"CRM_ID": action("set", 5)}),
        msg(email="b@example.com", data={"CRM_ID": action("incr", 1)}),
        msg(email="a@example.com", data={"CRM_ID": action("incr", 1)}),
        msg(email="c@example.com", data={"CRM_ID": action("incr", 1)}),
        msg(email="b@example.com", data={"CRM_ID": action("set", 7)}),
        msg(email="a@example.com", data={"CRM_ID": 10}),
        msg(email="c@example.com", data={"CRM_ID": action("incr", 2)}),
        msg(email="b@example.com", data={"CRM_ID": action("incr", 3)}),
        msg(email="a@example.com", data={"CRM_ID": action("incr", 2)}),
    ]
    harness.publish(*stream)
    stats = harness.run()
    assert stats.batches == 1 and stats.handled == len(stream)
    ok(harness.results())
    values = dict(harness.rows("SELECT email, (fields->>'CRM_ID')::int FROM profiles"))
    assert values == {"a@example.com": 12, "b@example.com": 10, "c@example.com": 43}


def test_an_identical_message_published_again_is_applied_again(harness: Harness) -> None:
    """The same body published three times (twice in one batch, once later) is three
    messages, not one redelivered: the increment applies three times, and each is
    answered."""
    ok(harness.import_(msg(email="same@example.com", data={"CRM_ID": 1})))
    body = orjson.dumps(msg(email="same@example.com", feedback_id="again", data={"CRM_ID": action("incr", 1)}))
    harness.publish(body, body)
    assert harness.run().handled == 2
    harness.publish(body)
    assert harness.run().handled == 1
    assert [r["feedback_id"] for r in ok(harness.results())] == ["again"] * 3
    assert harness.rows("SELECT (fields->>'CRM_ID')::int FROM profiles") == [(4,)]


def test_tags_added_and_deleted_in_one_batch_compose_in_order(harness: Harness) -> None:
    ok(harness.import_(msg(email="t@example.com", data={"interests": ["a"]})))
    harness.publish(
        msg(email="t@example.com", data={"interests": action("add", ["b", "c"])}),
        msg(email="t@example.com", data={"interests": action("delete", ["a", "b"])}),
        msg(email="t@example.com", data={"interests": action("add", ["a"])}),
    )
    harness.run()
    ok(harness.results())
    assert harness.rows("SELECT fields->'interests' FROM profiles") == [(["c", "a"],)]


def test_a_profile_created_by_an_action_starts_from_empty_fields(harness: Harness) -> None:
    results = ok(harness.import_(msg(email="new@example.com", data={
        "CRM_ID": action("incr", 3), "interests": action("delete", ["x"]), "prefs": action("upsert", 1, submatch="a.b"),
        "orders": action("upsert", {"id": 1}, submatch="id"), "phones": action("add", ["+79000000001"]),
    })))
    assert harness.rows("SELECT phones, fields FROM profiles WHERE profile_id = %s", results[0]["profile_id"]) == [(
        ["+79000000001"],
        {"CRM_ID": 3, "interests": [], "prefs": {"a": {"b": 1}}, "orders": [{"id": 1}]},
    )]


def test_an_increment_beyond_64_bits_is_a_400_for_that_message_only(harness: Harness) -> None:
    ok(harness.import_(msg(email="big@example.com", data={"CRM_ID": 2**63 - 2})))
    results = harness.import_(
        msg(email="big@example.com", data={"CRM_ID": action("incr", 5)}, feedback_id="over"),
        msg(email="other@example.com", data={"CRM_ID": action("incr", 5)}, feedback_id="fine"),
    )
    assert [(r["feedback_id"], r["error"]) for r in results] == [("over", 400), ("fine", 0)]
    assert "data.CRM_ID" in results[0]["error_text"]
    assert harness.rows("SELECT (fields->>'CRM_ID')::bigint FROM profiles WHERE email = 'big@example.com'") == [
        (2**63 - 2,)]


# --- triggers -------------------------------------------------------------------------------


def test_an_action_that_changes_nothing_records_an_update_event_as_a_plain_write_does(harness: Harness) -> None:
    """An `add` of a tag already present, a `delete` of one absent, each record one
    profile_updated event, exactly as a plain write of the same value would; the payload
    holds the action as the message gave it."""
    [created] = ok(harness.import_(msg(email="e@example.com", data={"interests": ["a"]})))
    ok(harness.import_(
        msg(email="e@example.com", data={"interests": action("add", ["a"])}, feedback_id="add-present"),
        msg(email="e@example.com", data={"interests": action("delete", ["z"])}, feedback_id="delete-absent"),
        msg(email="e@example.com", data={"interests": ["a"]}, feedback_id="plain-same"),
    ))
    events = harness.rows(
        "SELECT feedback_id, kind, payload FROM events WHERE profile_id = %s AND kind = 'profile_updated' "
        "ORDER BY event_id", created["profile_id"])
    assert events == [
        ("add-present", "profile_updated", {"fields": {"interests": {"action": "add", "value": ["a"]}}}),
        ("delete-absent", "profile_updated", {"fields": {"interests": {"action": "delete", "value": ["z"]}}}),
        ("plain-same", "profile_updated", {"fields": {"interests": ["a"]}}),
    ]
    assert harness.rows("SELECT fields FROM profiles") == [({"interests": ["a"]},)]


# --- exact under concurrency and redelivery ----------------------------------------------------


def incr_stream(tag: str, count: int, *, emails: int = 1) -> list[dict[str, Any]]:
    """`count` messages each adding 1 to CRM_ID of one of `emails` profiles, each its own message."""
    return [
        msg(email=f"{tag}-{i % emails}@example.com", feedback_id=f"{tag}-{i}", data={"CRM_ID": action("incr", 1)})
        for i in range(count)
    ]


@pytest.mark.slow
def test_four_workers_incrementing_one_field_two_thousand_times_leave_it_exactly_2000_higher(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a profile whose CRM_ID is 1000 and 2,000 messages each adding 1 to it, when four
    worker processes drain them together, then every message is answered with error 0 and
    CRM_ID is exactly 3000: each increment applied once, to the value stored at its commit."""
    [created] = ok(harness.import_(msg(email="hot-0@example.com", data={"CRM_ID": 1000})))
    messages = incr_stream("hot", 2000)
    harness.publish(*messages)
    env = worker_env(harness.settings, IMPORT_BATCH_SIZE="20", IMPORT_PREFETCH="40", IMPORT_BATCH_WAIT_MS="5")
    workers = [WorkerProcess(["run", "--until-empty"], env, tmp_path) for _ in range(4)]
    try:
        assert [w.wait(DRAIN_TIMEOUT_S) for w in workers] == [0, 0, 0, 0], workers[0].output()[-3000:]
    finally:
        for w in workers:
            w.stop()
    handled = [int(n) for n in re.findall(r"stopped: handled=(\d+)", Path(harness.settings.log_path).read_text())]
    assert len(handled) == 4 and min(handled) > 0, handled
    results = harness.results()
    assert sorted(r["feedback_id"] for r in results) == sorted(m["feedback_id"] for m in messages)
    assert {(r["error"], r["profile_id"]) for r in results} == {(0, created["profile_id"])}
    assert harness.rows("SELECT (fields->>'CRM_ID')::int FROM profiles") == [(3000,)]


@pytest.mark.slow
def test_a_worker_killed_mid_stream_three_times_applies_each_increment_exactly_once(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given 3,000 messages each adding 1 to CRM_ID of one of 30 profiles, when the worker
    is killed with SIGKILL three times while it works and then drains the queue, then each
    profile's CRM_ID is exactly the number of its messages: a redelivered message that was
    applied already is answered from the message log and not applied again."""
    messages = incr_stream("kill", 3000, emails=30)
    harness.publish(*messages)
    env = worker_env(harness.settings)
    answered_at_kill = []
    for _ in range(3):
        before = harness.queue_depth(harness.settings.result_queue)
        worker = WorkerProcess(["run"], env, tmp_path)
        try:
            wait_for(lambda before=before: harness.queue_depth(harness.settings.result_queue) >= before + 100,
                     "the restarted worker's results", while_alive=worker)
            assert worker.kill() == -signal.SIGKILL
            answered_at_kill.append(harness.queue_depth(harness.settings.result_queue))
        finally:
            worker.stop()
    assert answered_at_kill[-1] < len(messages), f"the stream was done before the last kill: {answered_at_kill}"
    final = WorkerProcess(["run", "--until-empty"], env, tmp_path)
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.output()[-3000:]

    results = harness.results()
    assert {r["feedback_id"] for r in results} == {m["feedback_id"] for m in messages}
    assert {r["error"] for r in results} == {0}
    values = dict(harness.rows("SELECT email, (fields->>'CRM_ID')::int FROM profiles"))
    assert values == {f"kill-{i}@example.com": 100 for i in range(30)}
    # The last run started on redeliveries, some of them applied before a kill.
    assert len(log_lines(harness.settings, "stopped: handled=")) == 1


@pytest.mark.slow
def test_increments_committed_before_a_crash_are_not_applied_again_when_redelivered(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker that dies right after committing its third batch, before publishing
    its results or acking (so that batch's messages are redelivered), when a new worker
    drains the queue, then those messages are answered from the message log: every
    profile's CRM_ID is exactly the number of its messages."""
    messages = incr_stream("commit", 600, emails=20)
    harness.publish(*messages)
    env = worker_env(harness.settings)
    crash_at_batch(env, tmp_path, "FAULT_CRASH_AFTER_COMMIT")
    done = WorkerProcess(["run", "--until-empty"], env, tmp_path)
    assert done.wait(DRAIN_TIMEOUT_S) == 0, done.output()[-3000:]
    assert {r["feedback_id"] for r in harness.results()} == {m["feedback_id"] for m in messages}
    values = dict(harness.rows("SELECT email, (fields->>'CRM_ID')::int FROM profiles"))
    assert values == {f"commit-{i}@example.com": 30 for i in range(20)}
    replayed = [line for line in log_lines(harness.settings, "stopped: handled=") if " replayed=0 " not in line]
    assert replayed, "the redelivered batch was answered from the message log"


# --- the loader passes actions through --------------------------------------------------------


def test_the_loader_passes_actions_through_from_jsonl_csv_and_set(harness: Harness, tmp_path: Path) -> None:
    """docs/loader.md, "Field actions": an action in a JSONL line, in a CSV cell of a `:json`
    column, and in a `--set ... :json` default reaches the worker as the action it is."""
    import io

    from dbimport.loader import build_parser, execute, make_plan

    ok(harness.import_(msg(email="ann@example.com", data={"CRM_ID": 10, "interests": ["a"]}),
                       msg(email="bob@example.com", data={"CRM_ID": 20})))
    (tmp_path / "rows.jsonl").write_text(
        '{"email": "ann@example.com", "data": {"CRM_ID": {"action": "incr", "value": 5}}}\n'
        '{"email": "bob@example.com", "CRM_ID": {"action": "incr", "value": -5}}\n')
    (tmp_path / "rows.csv").write_text(
        'email,Purchases\nann@example.com,"{""action"": ""incr"", ""value"": 1}"\n')

    def load(*argv: str) -> None:
        args = build_parser().parse_args([*argv, "--account-id", "1", "--db-id", "1", "--no-progress"])
        report = tmp_path / "report.csv"
        assert execute(make_plan(args), harness.settings, report, out=io.StringIO(), err=io.StringIO()) == 0

    load(str(tmp_path / "rows.jsonl"))
    load(str(tmp_path / "rows.csv"), "--map", "email=email,CRM_ID:json=Purchases",
         "--set", 'interests:json={"action": "add", "value": ["csv"]}')
    harness.run()
    ok(harness.results())
    assert dict(harness.rows("SELECT email, fields FROM profiles")) == {
        "ann@example.com": {"CRM_ID": 16, "interests": ["a", "csv"]},
        "bob@example.com": {"CRM_ID": 15},
    }
