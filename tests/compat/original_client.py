#!/usr/bin/env python3
"""A client of the original Wallex service (NestJS), written from its project summary
(`shared/seed/000_678db75e37aeebf6.txt`) and nothing else: the routes, request fields and answers
its own clients and load test (`scripts/quick_load_test.py --wallets N --operations M --fast
--workers W`) relied on. It runs unchanged against Wallex.

What it relies on, as the original answered:
- `GET /health/kafka`: `status`, `producer.connected`, `kafka.status`.
- `POST /wallets` with `walletId`, `ownerId`, `initialBalance` (a JSON number): 201 and the wallet,
  whose `id` the client reads.
- `POST /wallets/{id}/credit|debit` with `amount` (a number) and `description`: 201 and the wallet
  after it (`balance`, `version`); a debit beyond the balance is an error with `statusCode` and
  `message`.
- `POST /wallets/{from}/transfer` with `toWalletId`, `amount`, `description`: 201 with
  `fromWallet` and `toWallet`.
- `GET /wallets/{id}` right after: the balance and version every acknowledged operation made.
- `GET /wallets`: every wallet, as a JSON array.
- `GET /ledger/wallet/{id}`: `walletId`, `count` and `transactions` (`transactionType`, `amount`,
  `balanceBefore`, `balanceAfter`, `description`, `relatedWalletId`, `createdAt`).

It checks money exactly (Decimal from the answers' text) and exits non-zero on the first broken
expectation. Standard library only.
"""

import argparse
import json
import random
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


class Client:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def money(value):
    """An amount as the answers carry it, exactly."""
    return Decimal(str(value))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--wallets", type=int, default=50)
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fast", action="store_true", help="accepted for the original's command line")
    args = parser.parse_args()
    client = Client(args.url)
    rng = random.Random(args.seed)

    status, health = client.call("GET", "/health/kafka")
    expect(status == 200, f"/health/kafka answered {status}: {health}")
    expect(health["status"] == "healthy", f"health: {health}")
    expect(health["producer"]["connected"] is True, f"health: {health}")
    expect(health["kafka"]["status"] == "connected", f"health: {health}")

    run = rng.randrange(1 << 30)
    names = [f"wallet-{run}-{i}" for i in range(args.wallets)]
    balances = {}
    versions = {}
    lock = threading.Lock()

    def create(name):
        status, wallet = client.call(
            "POST", "/wallets", {"walletId": name, "ownerId": f"user-{run}", "initialBalance": 100.00}
        )
        expect(status == 201, f"create {name}: {status} {wallet}")
        wallet_id = wallet["id"]
        expect(wallet_id == name, f"create answered id {wallet_id} for {name}")
        expect(money(wallet["balance"]) == Decimal("100"), f"create {name}: balance {wallet['balance']}")
        with lock:
            balances[wallet_id] = Decimal("100")
            versions[wallet_id] = wallet["version"]

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(create, names))

    # One lock per wallet: each operation's expected effect is applied in the order the service
    # acknowledged it (a transfer holds both, in name order, as the original's deadlock rule did).
    wallet_locks = {name: threading.Lock() for name in names}
    plans = []
    for _ in range(args.operations):
        kind = rng.choice(["credit", "debit", "transfer"])
        amount = Decimal(rng.randrange(1, 5000)) / 100
        source = rng.choice(names)
        target = rng.choice([name for name in names if name != source])
        plans.append((kind, source, target, amount))
    outcomes = {"credit": 0, "debit": 0, "transfer": 0, "refused": 0}

    def operate(plan):
        kind, source, target, amount = plan
        held = sorted({source, target}) if kind == "transfer" else [source]
        for name in held:
            wallet_locks[name].acquire()
        try:
            if kind == "transfer":
                body = {"toWalletId": target, "amount": float(amount), "description": "Payment"}
                status, answer = client.call("POST", f"/wallets/{source}/transfer", body)
            else:
                body = {"amount": float(amount), "description": "Deposit from bank" if kind == "credit" else "ATM withdrawal"}
                status, answer = client.call("POST", f"/wallets/{source}/{kind}", body)
            if status == 201:
                with lock:
                    if kind == "credit":
                        balances[source] += amount
                    else:
                        balances[source] -= amount
                    if kind == "transfer":
                        balances[target] += amount
                        expect(answer["fromWallet"]["id"] == source, f"transfer: {answer}")
                        expect(answer["toWallet"]["id"] == target, f"transfer: {answer}")
                        expect(money(answer["fromWallet"]["balance"]) == balances[source], f"transfer: {answer}")
                        expect(money(answer["toWallet"]["balance"]) == balances[target], f"transfer: {answer}")
                        versions[source] = answer["fromWallet"]["version"]
                        versions[target] = answer["toWallet"]["version"]
                    else:
                        expect(answer["id"] == source, f"{kind}: {answer}")
                        expect(money(answer["balance"]) == balances[source], f"{kind} {source}: {answer}")
                        versions[source] = answer["version"]
                    outcomes[kind] += 1
            else:
                expect(status in (400, 422), f"{kind} {source}: {status} {answer}")
                expect(answer["statusCode"] == status and answer["message"], f"{kind}: error body {answer}")
                expect(kind != "credit", f"a credit was refused: {answer}")
                with lock:
                    outcomes["refused"] += 1
        finally:
            for name in reversed(held):
                wallet_locks[name].release()

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(operate, plans))
    expect(outcomes["credit"] + outcomes["debit"] + outcomes["transfer"] > args.operations // 2, f"{outcomes}")

    # Right after the last acknowledgement: every balance and version as acknowledged.
    for name in names:
        status, wallet = client.call("GET", f"/wallets/{name}")
        expect(status == 200, f"get {name}: {status}")
        expect(money(wallet["balance"]) == balances[name], f"{name}: balance {wallet['balance']}, expected {balances[name]}")
        expect(wallet["version"] == versions[name], f"{name}: version {wallet['version']}, expected {versions[name]}")

    status, listed = client.call("GET", "/wallets?limit=1000")
    expect(status == 200 and isinstance(listed, list), f"GET /wallets: {status}")
    expect(set(names) <= {wallet["id"] for wallet in listed}, "GET /wallets lists every wallet")

    for name in names[:10]:
        status, ledger = client.call("GET", f"/ledger/wallet/{name}?limit=1000")
        expect(status == 200, f"ledger {name}: {status}")
        expect(ledger["walletId"] == name, f"ledger: {ledger['walletId']}")
        transactions = ledger["transactions"]
        expect(ledger["count"] == len(transactions), "count is the number of transactions")
        newest = transactions[0]
        expect(money(newest["balanceAfter"]) == balances[name], f"ledger {name}: newest {newest}")
        for entry in transactions:
            expect(entry["transactionType"] in ("CREDIT", "DEBIT", "TRANSFER_OUT", "TRANSFER_IN"), f"{entry}")
            signed = money(entry["amount"]) if entry["transactionType"] in ("CREDIT", "TRANSFER_IN") else -money(entry["amount"])
            expect(money(entry["balanceBefore"]) + signed == money(entry["balanceAfter"]), f"{entry}")
            if entry["transactionType"].startswith("TRANSFER"):
                expect(entry["relatedWalletId"] in names, f"{entry}")
            expect(entry["createdAt"], f"{entry}")

    print(f"original client: {args.wallets} wallets, {args.operations} operations: {outcomes}, every check held")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as failure:
        print(f"original client: {failure}", file=sys.stderr)
        sys.exit(1)
