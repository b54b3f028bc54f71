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

--idempotency-keys (or IDEMPOTENCY_KEYS=true), like `loadtest run --idempotency-keys`: every order carries a
fresh Idempotency-Key (a UUIDv4, as a quoted Structured Field string), and a 503, a 409, a timeout or a
connection error is retried with the same key and the same body: Retry-After honoured up to 5 s, jittered
backoff otherwise, at most 5 attempts (the 10 s timeout applies to each). A keyed order is one entry,
/orders/<mode>, with its last attempt's outcome and a response time from its first attempt to its last answer,
retries and pauses included. Counters are stats entries of type "idempotency" (kept out of the Aggregated
row): "retries" (attempts after the first), "replays" (answers with Idempotent-Replayed: true) and
"duplicate orders created" (keys answered with more than one order id; each is also a failure, so the run
exits non-zero). They are printed again when Locust quits.

    IDEMPOTENCY_KEYS=true MODE=async locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080

Locust is a closed-model tool: a user waits for each answer before sending the next, so when the server slows
down, Locust slows down with it and the latencies it reports leave out the time requests *would* have waited
(coordinated omission). `flash-sale-open` approximates 60 orders/s with 60 users at one request per second
each, as the lab did, which holds only while answers take under a second. `loadtest run --rate 60/s` is a true
open model and measures latency from each request's intended send time.

Failures are named like loadtest's classes: timeout (no answer in 10 s, or 504), shed (503), declined (402),
server_error (other 5xx), client_error (other 4xx).
"""

import email.utils
import json
import os
import random
import time
import uuid
from datetime import datetime, timezone

import gevent
import requests
from locust import HttpUser, LoadTestShape, between, constant_throughput, events, task
from locust.stats import StatsError

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

# Keyed requests' retries, as loadtest's (loadgen/src/idempotency.rs): attempts per order, the first included;
# the first retry's backoff ceiling, doubled per retry up to the highest; the longest Retry-After honoured.
MAX_ATTEMPTS = 5
BASE_BACKOFF = 0.1
MAX_BACKOFF = 2.0
RETRY_AFTER_CAP = 5.0

# The stats entries that count keyed requests' retries, replays and duplicate orders.
IDEMPOTENCY = "idempotency"
COUNTERS = ("retries", "replays", "duplicate orders created")


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    """--idempotency-keys, also read from IDEMPOTENCY_KEYS (true/false)."""
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        default=False,
        env_var="IDEMPOTENCY_KEYS",
        help="Send an Idempotency-Key with every order; retry 503, 409, timeouts and connection errors with it",
    )


def keys_enabled(environment):
    """Whether --idempotency-keys (or IDEMPOTENCY_KEYS) is set."""
    return bool(getattr(environment.parsed_options, "idempotency_keys", False))


class DuplicateOrder(Exception):
    """A key was answered with more than one order id: the server created the order twice."""


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


def retryable(status):
    """503 (shed, or the outcome unknown), 409 (an attempt with the key still in flight), 0 (no answer)."""
    return status in (0, 409, 503)


def retry_after(response):
    """Retry-After in seconds (delay-seconds or an HTTP date), or None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def pause(retry, after):
    """The pause before retry number `retry` (1 for the first): at least a (capped) Retry-After, else half to
    all of the backoff ceiling; a random share of the ceiling is added so shed clients do not return together."""
    ceiling = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (retry - 1))
    jitter = random.uniform(0, ceiling / 2)
    if after is not None:
        return min(after, RETRY_AFTER_CAP) + jitter
    return ceiling / 2 + jitter


def named_order_id(response):
    """The order id an answer names: `order_id` at the top (2xx) or in `error` (e.g. 503 outcome_unknown)."""
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    return body.get("order_id") or (error.get("order_id") if isinstance(error, dict) else None)


def count(environment, counter):
    """One more of an idempotency counter: a stats entry of its own, kept out of the Aggregated row."""
    environment.stats.get(counter, IDEMPOTENCY).log(0, 0)


def duplicate(environment, error):
    """One more duplicate order: counted, and a failure in the error report (so Locust exits non-zero), but
    not in the Aggregated row, whose orders were answered."""
    name = COUNTERS[2]
    count(environment, name)
    environment.stats.get(name, IDEMPOTENCY).log_error(error)
    key = StatsError.create_key(IDEMPOTENCY, name, error)
    environment.stats.errors.setdefault(key, StatsError(IDEMPOTENCY, name, error)).occurred()


@events.quitting.add_listener
def print_counters(environment, **_kwargs):
    """The counters again, in loadtest's words, when keys were on."""
    if environment.parsed_options is None or not keys_enabled(environment):
        return
    retries, replays, duplicates = (environment.stats.get(c, IDEMPOTENCY).num_requests for c in COUNTERS)
    print(f"idempotency keys: {retries} retries, {replays} replays, {duplicates} duplicate orders created")


class OrderUser(HttpUser):
    """Places orders on the endpoint MODE selects, pausing as the scenario says."""

    wait_time = WAIT

    def on_start(self):
        # Keyed attempts go through a plain session, so that only the whole keyed order is a Locust request.
        self.attempts = requests.Session() if keys_enabled(self.environment) else None

    @task
    def place_order(self):
        if self.attempts is not None:
            self.place_keyed_order()
            return
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

    def place_keyed_order(self):
        """One order with a fresh key, retried with the same key and body while its fate is open; recorded
        once, with its last attempt's outcome and a response time that covers every attempt."""
        path = f"/orders/{MODE}"
        headers = {"Idempotency-Key": f'"{uuid.uuid4()}"', "Content-Type": "application/json"}
        body = json.dumps(random_order())
        order_ids = set()
        started = time.perf_counter()
        start_time = time.time()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if attempt > 1:
                count(self.environment, "retries")
            try:
                response = self.attempts.post(
                    self.host + path, data=body, headers=headers, timeout=REQUEST_TIMEOUT
                )
            except requests.RequestException as error:
                status, length, after, last_error = 0, 0, None, error
            else:
                status, length, after, last_error = response.status_code, len(response.content), None, None
                if response.headers.get("Idempotent-Replayed", "").strip().lower() in ("true", "?1"):
                    count(self.environment, "replays")
                order_id = named_order_id(response)
                if order_id:
                    order_ids.add(order_id)
                after = retry_after(response)
            if not retryable(status) or attempt == MAX_ATTEMPTS:
                break
            gevent.sleep(pause(attempt, after))
        failure = failure_class(status)
        self.environment.events.request.fire(
            request_type="POST",
            name=path,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context={},
            exception=None if failure is None else Exception(f"{failure} ({status or last_error})"),
            start_time=start_time,
            url=self.host + path,
        )
        if len(order_ids) > 1:
            duplicate(self.environment, DuplicateOrder(f"one key, {len(order_ids)} order ids"))


class ScenarioShape(LoadTestShape):
    """Ramps to the scenario's users at its spawn rate and stops at its run time."""

    def tick(self):
        if self.get_run_time() >= RUN_TIME:
            return None
        return USERS, SPAWN_RATE
