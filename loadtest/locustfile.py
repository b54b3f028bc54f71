"""The loadtest scenarios for Locust users: the same orders, endpoints, waits and timeouts as
`cargo run --release -p loadtest -- compare`, for people who already know Locust.

Start a stack first (locally: `cargo run --release -p loadtest -- up`, which serves on 127.0.0.1:8080), then:

    pip install locust
    SCENARIO=normal           MODE=sync  locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080
    SCENARIO=flash-sale-users MODE=sync  locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080
    SCENARIO=flash-sale-open  MODE=async locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080

SCENARIO (default normal):
  normal            5 users, spawn 1/s, wait 0.1-0.5 s, 30 s      (the lab's normal traffic)
  flash-sale-users  20 users, spawn 10/s, wait 0.1-0.5 s, 60 s    (the lab's sync flash sale)
  flash-sale-open   60 users, spawn 10/s, 1 request/s each, 60 s  (the lab's ~60 orders/s flash sale)
MODE: sync (POST /orders/sync) or async (POST /orders/async, the default).

Locust is a closed-model tool: a user waits for each answer before sending the next, so when the server slows
down, Locust slows down with it and the latencies it reports leave out the time requests *would* have waited
(coordinated omission). `flash-sale-open` approximates 60 orders/s with 60 users at one request per second
each, as the lab did, which holds only while answers take under a second. `loadtest run --rate 60/s` is a true
open model and measures latency from each request's intended send time.

Failures are named like loadtest's classes: timeout (no answer in 10 s, or 504), shed (503), declined (402),
server_error (other 5xx), client_error (other 4xx).
"""

import os
import random

from locust import HttpUser, LoadTestShape, between, constant_throughput, task

# The lab's request timeout (its load balancer's), in seconds.
REQUEST_TIMEOUT = 10.0

# name: (users, spawn rate per second, run time in seconds, wait between a user's requests)
SCENARIOS = {
    "normal": (5, 1, 30, between(0.1, 0.5)),
    "flash-sale-users": (20, 10, 60, between(0.1, 0.5)),
    "flash-sale-open": (60, 10, 60, constant_throughput(1.0)),
}

SCENARIO = os.environ.get("SCENARIO", "normal")
MODE = os.environ.get("MODE", "async")
if SCENARIO not in SCENARIOS:
    raise SystemExit(f"SCENARIO must be one of {', '.join(SCENARIOS)}; got {SCENARIO!r}")
if MODE not in ("sync", "async"):
    raise SystemExit(f"MODE must be sync or async; got {MODE!r}")

USERS, SPAWN_RATE, RUN_TIME, WAIT = SCENARIOS[SCENARIO]


def random_order():
    """An order shaped like loadtest's: a random customer, one to three items, prices with two decimals."""
    items = [
        {
            "product_id": f"PROD-{random.randint(1, 100):03d}",
            "quantity": random.randint(1, 5),
            "price": round(random.randint(100, 19999) / 100, 2),
        }
        for _ in range(random.randint(1, 3))
    ]
    return {"customer_id": random.randint(1, 10_000), "items": items}


def failure_class(status):
    """loadtest's failure class for an HTTP status, or None for a success."""
    if 200 <= status < 300:
        return None
    if status == 402:
        return "declined"
    if status == 503:
        return "shed"
    if status == 504 or status == 0:  # 0: no answer (Locust reports timeouts and connection errors as 0)
        return "timeout"
    if status >= 500:
        return "server_error"
    return "client_error"


class OrderUser(HttpUser):
    """Places orders on the endpoint MODE selects, pausing as the scenario says."""

    wait_time = WAIT

    @task
    def place_order(self):
        with self.client.post(
            f"/orders/{MODE}",
            json=random_order(),
            name=f"/orders/{MODE}",
            timeout=REQUEST_TIMEOUT,
            catch_response=True,
        ) as response:
            failure = failure_class(response.status_code)
            if failure is None:
                response.success()
            else:
                response.failure(f"{failure} ({response.status_code})")


class ScenarioShape(LoadTestShape):
    """Ramps to the scenario's users at its spawn rate and stops at its run time."""

    def tick(self):
        if self.get_run_time() >= RUN_TIME:
            return None
        return USERS, SPAWN_RATE
