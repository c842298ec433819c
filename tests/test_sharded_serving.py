"""Sharded placement through the serving path (issue 16, items 4 and 5): two placement actors,
four `sim` workers. Each shard's actor knows only the workers whose replica id hashes to it,
every request is placed by exactly one shard on one of its own workers, and killing a shard's
actor under load loses no request (the router falls back, the actor restarts and rebuilds
its workers from their heartbeats). The workers report through per-node heartbeat relays
(placement.heartbeat_relay; the other serving tests cover direct heartbeats), so the kill also
covers a relay finding its shard's restarted actor."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.conftest import complete_many, serve_run

pytestmark = pytest.mark.serving
APP = "sharded"
SHARDS = 2
WORKERS = 4
# what these tests check is where requests go and that none is lost: no SLO a slow host misses
LENIENT_SLO = {"x-slo-ttft-ms": "60000"}


def _complete(url: str, n: int, max_tokens: int = 12, spacing_s: float = 0.0):
    return complete_many(url, n, max_tokens, spacing_s, headers=LENIENT_SLO)


@pytest.fixture(scope="module")
def sharded_app(ray_cluster):
    from ray import serve

    serve_run(
        ray_cluster, "serve_app.app:build_app", "engine.kind=sim", "engine.cpus_per_rank=0.25",
        f"workers.num_workers={WORKERS}", "ingress.num_cpus=0.25", "placement.policy=aladdin",
        f"placement.shards={SHARDS}", "placement.actor_timeout_s=5", "placement.heartbeat_relay=true",
        "--name", APP, "--route-prefix", f"/{APP}", name=APP,
    )
    yield f"{ray_cluster.http}/{APP}"
    serve.delete(APP)


def _actors() -> dict[int, Any]:
    """The shards' actors, by shard. A shard no worker hashes to may have none: nothing asked
    for it (replica ids are random: all four hash to one shard 1 time in 8); shard 0 always
    has one (the others send it their demand)."""
    from serve_app.scheduler.placement_actor import find_placement_actor

    actors = {}
    for shard in range(SHARDS):
        try:
            actors[shard] = find_placement_actor(APP, shard)
        except LookupError:
            assert shard != 0, "shard 0's actor is missing"
    return actors


def _relays() -> dict[str, dict[str, int]]:
    """Each of the app's heartbeat relays (one per shard on this one node) and its counts."""
    import ray

    from serve_app.scheduler.placement_actor import NAMESPACE

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(f"relay:placement:{APP}:")]
    return {name: ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote(), timeout=30) for name in names}


def _workers_by_shard() -> dict[int, set[str]]:
    """Each shard's workers as its actor knows them, once all four have reported."""
    import ray

    deadline = time.monotonic() + 60
    while True:
        actors = _actors()
        known = {k: set(ray.get(actors[k].stats.remote())["residents"]) if k in actors else set()
                 for k in range(SHARDS)}
        if sum(len(w) for w in known.values()) == WORKERS or time.monotonic() > deadline:
            return known
        time.sleep(0.5)


def test_each_shard_owns_its_workers_and_places_only_on_them(sharded_app):
    import ray

    from placement.sharding import shard_of

    known = _workers_by_shard()
    assert sum(len(w) for w in known.values()) == WORKERS, known
    assert all(shard_of(w, SHARDS) == k for k, workers in known.items() for w in workers)
    responses = asyncio.run(_complete(sharded_app, 24))
    assert [r.status_code for r in responses] == [200] * 24
    served = {r.json()["aladdin"]["request_id"]: r.json()["aladdin"]["worker"] for r in responses}
    actors = _actors()
    chosen = {k: ray.get(a.decisions.remote(list(served))) for k, a in actors.items()}
    for request_id, worker in served.items():
        deciders = [k for k, decisions in chosen.items() if request_id in decisions]
        assert len(deciders) == 1, (request_id, deciders)  # placed by exactly one shard ...
        (k,) = deciders
        assert chosen[k][request_id] == worker and worker in known[k]  # ... on one of its own workers
    summaries = {k: ray.get(a.summary.remote()) for k, a in actors.items()}
    assert {k: s["workers"] for k, s in summaries.items()} == {k: len(known[k]) for k in actors}
    assert all(0.0 <= s["room"] <= 1.0 for s in summaries.values())
    # the reports came through one relay per shard owning workers, several to a call
    relays = _relays()
    assert len(relays) == sum(1 for w in known.values() if w), relays
    assert sum(r["reports"] for r in relays.values()) > sum(r["calls"] for r in relays.values()) > 0, relays


def test_every_shard_learns_the_demand_and_workers_of_the_others(sharded_app):
    """Shard 0's table: each shard's worker target counts every shard's workers. Shard 0 learns
    them even when no worker hashes to it (it asks for the nodes); another shard without
    workers has no estimate to send, so nothing to learn (ids are random: either can happen)."""
    import ray

    known = _workers_by_shard()
    learners = [k for k in range(SHARDS) if k == 0 or known[k]]
    deadline = time.monotonic() + 120  # shards report once per estimate period (5 s)
    while time.monotonic() < deadline:
        asyncio.run(_complete(sharded_app, 2))
        stats = {k: ray.get(a.stats.remote()) for k, a in _actors().items()}
        if [stats[k]["demand_elsewhere"]["held"] for k in learners] == [WORKERS - len(known[k]) for k in learners]:
            return
        time.sleep(1)
    raise AssertionError(f"shards own {known}; they see {[(s['residents'], s['demand_elsewhere']) for s in stats.values()]}")


def test_killing_a_shard_actor_under_load_loses_no_request(sharded_app):
    import ray

    known = _workers_by_shard()
    victim = max(range(SHARDS), key=lambda k: len(known[k]))  # a shard that owns workers
    actor = _actors()[victim]
    killer = threading.Timer(1.0, lambda: ray.kill(actor, no_restart=False))
    killer.start()
    responses = asyncio.run(_complete(sharded_app, 30, max_tokens=30, spacing_s=0.1))
    killer.join()
    assert [r.status_code for r in responses] == [200] * 30
    assert all(r.json()["usage"]["completion_tokens"] == 30 for r in responses)
    # recovered: the restarted actor knows its workers again from their heartbeats
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = asyncio.run(_complete(sharded_app, 4))
        assert all(r.status_code == 200 for r in after)
        if set(ray.get(_actors()[victim].stats.remote())["residents"]) == known[victim]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"shard {victim} did not recover its workers {known[victim]}")
