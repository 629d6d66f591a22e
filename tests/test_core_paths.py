"""Quick checks of the core paths the later suites build on."""
import pika

from conftest import msg


def test_subscriptions_and_events(harness):
    results = harness.import_(
        msg(email="a@example.com", data={"subscriptions": [
            {"resource_id": 24, "channel": "email", "email": "a@example.com"},
            {"resource_id": 24, "channel": "sms", "phone": "+79000000001", "status": "unsubscribed"},
        ]}),
        msg(email="a@example.com", data={"subscriptions": [
            {"resource_id": 24, "channel": "sms", "phone": "+79000000001", "status": "subscribed", "custom_fields": {"level": "3"}},
        ]}),
        msg(matching="phone_sub", phone="+7 (900) 000-00-01", data={"_fname": "A"}),
    )
    assert [r["error"] for r in results] == [0, 0, 0], results
    assert len({r["profile_id"] for r in results}) == 1
    kinds = [k for (k,) in harness.rows("SELECT kind FROM events ORDER BY event_id")]
    assert kinds == ["profile_created", "subscribed", "subscription_status_changed",
                     "profile_updated", "subscription_status_changed", "profile_updated"], kinds
    assert harness.rows("SELECT channel, status, custom_fields FROM subscriptions ORDER BY channel") == [
        ("email", "subscribed", {}), ("sms", "subscribed", {"level": 3})]


def test_redelivered_message_is_answered_from_the_log(harness):
    harness.publish(msg(email="r@example.com", feedback_id="r1"))
    harness.run()
    first = harness.results()
    # Pretend the ack was lost: the broker redelivers the same message.
    from dbimport.broker import Delivery
    from dbimport.worker import Worker
    import orjson
    w = Worker(harness.settings)
    w.catalog.reload()
    body = orjson.dumps(msg(email="r@example.com", feedback_id="r1"))
    batch = w.pipeline.handle([Delivery(tag=1, body=body, redelivered=True)], sleep=lambda s: None)
    assert batch.outcomes[0].replayed
    assert batch.outcomes[0].result.to_json() == orjson.dumps(first[0])
    assert harness.count("SELECT count(*) FROM events") == 1


def test_poison_message_is_dead_lettered_after_max_deliveries(harness, monkeypatch):
    from dbimport.matchers import email as email_mod
    def boom(self, lookup, queries):
        raise RuntimeError("plugin bug")
    monkeypatch.setattr(email_mod.EmailMatcher, "find_many", boom)
    harness.publish(msg(email="p@example.com", feedback_id="poison"), msg(matching="email_profile", email="ok@example.com", feedback_id="fine"))
    stats = harness.run(settings=harness.settings.replace(max_deliveries=3))
    results = harness.results()
    by_fb = {r["feedback_id"]: r for r in results}
    assert by_fb["poison"]["error"] == 500
    assert by_fb["fine"]["error"] == 0
    assert len(results) == 2
    assert harness.queue_depth(harness.settings.dead_queue) == 1


def test_replayed_dead_letter_is_handled_afresh(harness, monkeypatch):
    from dbimport.matchers import email as email_mod
    from dbimport.replay import replay_dead
    original = email_mod.EmailMatcher.find_many
    monkeypatch.setattr(email_mod.EmailMatcher, "find_many", lambda self, lookup, queries: 1 / 0)
    harness.publish(msg(email="p@example.com", feedback_id="poison"))
    harness.run(settings=harness.settings.replace(max_deliveries=2))
    assert [r["error"] for r in harness.results()] == [500]
    monkeypatch.setattr(email_mod.EmailMatcher, "find_many", original)
    assert replay_dead(harness.settings) == 1
    harness.run()
    assert [r["error"] for r in harness.results()] == [0]
    assert harness.queue_depth(harness.settings.dead_queue) == 0
