"""Accounts -> services -> metrics from a paged HTTP API: a streaming source, nested
fan-out with ``flatten``.

The script serves a small fake HTTP API itself (stdlib ``http.server`` in a thread):

    GET /accounts?page=<k>           -> {"accounts": ["acc-000", ...], "next": k + 1 or null}
    GET /accounts/<id>/services      -> [{"id": "acc-000-svc-0", "account": "acc-000"}, ...]
    GET /services/<id>/metrics       -> {"service": ..., "requests": ..., "errors": ...}

and answers a seeded fraction of the calls with HTTP 503, which the tasks absorb with
``retries=`` and ``retry_delay=``. The tasks call it with ``urllib.request`` from the
workers:

    accounts = list_accounts(api)                       # a generator: page after page
    services = list_services.map(accounts)              # one list per account
    metrics = fetch_metrics.map(df.flatten(services))   # one call per service
    report = aggregate(services, metrics)

``list_accounts`` is a generator task (a stream, README "Streaming sources"): an
account's services are listed as soon as its page arrived, while the next page is being
fetched. How many services there are is known only as each account's list arrives: the
metrics calls of an account's services start as soon as that account's list is done.

    python examples/accounts_services.py                      # embedded LocalCluster
    python examples/accounts_services.py --address tcp://10.0.0.5:8786 --api-host 10.0.0.7

With ``--address``, the workers must reach this machine: ``--api-host`` is the address
the API binds to and announces (default 127.0.0.1, enough for workers on this machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dask.config

import dynflow as df

# ----------------------------------------------------------------- the fake API


class FakeAPI:
    """The API's data, made from a seed, and its flaky HTTP server."""

    def __init__(
        self,
        n_accounts: int,
        seed: int,
        failure_rate: float,
        max_failures: int,
        host: str = "127.0.0.1",
    ) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.failure_rate = failure_rate
        self.max_failures = max_failures  # per URL: later calls of it always succeed
        self.accounts = [f"acc-{i:03d}" for i in range(n_accounts)]
        self.page_size = 4
        self.services: dict[str, list[dict[str, str]]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        for account in self.accounts:
            self.services[account] = []
            for j in range(rng.randint(0, 5)):
                sid = f"{account}-svc-{j}"
                self.services[account].append({"id": sid, "account": account})
                requests = rng.randint(100, 10_000)
                self.metrics[sid] = {
                    "service": sid,
                    "requests": requests,
                    "errors": rng.randint(0, requests // 20),
                    "latency_ms": round(rng.uniform(5, 500), 1),
                }
        self.calls: dict[str, int] = {}  # URL path -> calls so far
        self.served_503 = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fails(self, path: str) -> bool:
        """Whether this call of ``path`` gets a 503: seeded per (path, attempt)."""
        with self._lock:
            attempt = self.calls.get(path, 0)
            self.calls[path] = attempt + 1
            if attempt >= self.max_failures:
                return False
            fail = random.Random(f"{self.seed}/{path}/{attempt}").random() < self.failure_rate
            self.served_503 += fail
            return fail

    def answer(self, path: str) -> Any:
        path, _, query = path.partition("?")
        parts = path.strip("/").split("/")
        if parts == ["accounts"]:  # paged: ?page=k (from 0)
            k = int(query.removeprefix("page=") or 0) if query.startswith("page=") else 0
            size = self.page_size
            more = (k + 1) * size < len(self.accounts)
            return {
                "accounts": self.accounts[k * size : (k + 1) * size],
                "next": k + 1 if more else None,
            }
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "services":
            return self.services.get(parts[1])
        if len(parts) == 3 and parts[0] == "services" and parts[2] == "metrics":
            return self.metrics.get(parts[1])
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if api.fails(self.path):
                    self.send_error(503, "try again")
                    return
                body = api.answer(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet

        return Handler


# ----------------------------------------------------------------------- tasks


def get_json(url: str) -> Any:
    """GET ``url``; a 5xx answer or a failed connection raises ConnectionError (retried)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConnectionError(f"HTTP {e.code} from {url}") from None
        raise LookupError(f"HTTP {e.code} from {url}") from None  # not retried
    except urllib.error.URLError as e:
        raise ConnectionError(f"{url}: {e.reason}") from None


RETRIES = dict(retries=4, retry_delay=0.05, retry_backoff=2.0, retry_on=(ConnectionError,))


@df.task(**RETRIES)
def list_accounts(api: str) -> Iterator[str]:
    """Every account, page after page: a stream, whose accounts start their maps as soon
    as their page arrived. A retry calls it again and skips the accounts handed on."""
    page: int | None = 0
    while page is not None:
        body = get_json(f"{api}/accounts?page={page}")
        yield from body["accounts"]
        page = body["next"]


@df.task(**RETRIES, task_run_name="services-{account}")  # labels items in errors and logs
def list_services(account: str, api: str) -> list[dict[str, str]]:
    return get_json(f"{api}/accounts/{account}/services")


@df.task(**RETRIES, task_run_name=lambda service, **_: f"metrics-{service['id']}")
def fetch_metrics(service: dict[str, str], api: str) -> dict[str, Any]:
    metrics = get_json(f"{api}/services/{service['id']}/metrics")
    return {**metrics, "account": service["account"]}


@df.task
def aggregate(services: list[list[dict]], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per account and overall."""
    per_account: dict[str, dict[str, int]] = {}
    for account_services in services:
        for s in account_services:
            per_account.setdefault(s["account"], {"services": 0, "requests": 0, "errors": 0})
    for m in metrics:
        a = per_account[m["account"]]
        a["services"] += 1
        a["requests"] += m["requests"]
        a["errors"] += m["errors"]
    return {
        "accounts": len(services),
        "services": len(metrics),
        "requests": sum(m["requests"] for m in metrics),
        "errors": sum(m["errors"] for m in metrics),
        "per_account": per_account,
    }


@df.flow
def pipeline(api: str) -> dict[str, Any]:
    accounts = list_accounts(api)
    services = list_services.map(accounts, api=df.unmapped(api))
    metrics = fetch_metrics.map(df.flatten(services), api=df.unmapped(api))
    return aggregate(services, metrics)


def expected(api: FakeAPI) -> dict[str, Any]:
    """The totals straight from the fake API's own data."""
    metrics = list(api.metrics.values())
    per_account = {}
    for account in api.accounts:
        ms = [api.metrics[s["id"]] for s in api.services[account]]
        if ms:
            per_account[account] = {
                "services": len(ms),
                "requests": sum(m["requests"] for m in ms),
                "errors": sum(m["errors"] for m in ms),
            }
    return {
        "accounts": len(api.accounts),
        "services": len(metrics),
        "requests": sum(m["requests"] for m in metrics),
        "errors": sum(m["errors"] for m in metrics),
        "per_account": per_account,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="accounts in the fake API")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--failure-rate", type=float, default=0.2, help="fraction of calls answered with 503"
    )
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    parser.add_argument(
        "--api-host",
        default="127.0.0.1",
        help="address the fake API binds to and announces; the workers must reach it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    # at most 2 failures per URL, 4 retries per call: every call succeeds in the end
    with FakeAPI(args.n, args.seed, args.failure_rate, 2, host=args.api_host) as api:
        result = pipeline.build(api.url).compute()

    want = expected(api)
    assert result == want, (result, want)
    calls = sum(api.calls.values())
    print(
        f"{result['accounts']} accounts, {result['services']} services: "
        f"{result['requests']} requests, {result['errors']} errors "
        f"({calls} API calls, {api.served_503} answered 503 and retried)"
    )
    return result


if __name__ == "__main__":
    main()
