"""Interop: Python `websockets` (a client nobody here wrote) against the real daemon.

Usage: client.py WS_URL ALICE_TOKEN BOB_TOKEN. Prints OK and exits 0 when hello, send, ack,
receive, sync and a clean close all behave as PROTOCOL.md says.
"""
import asyncio
import json
import sys

import websockets


async def expect(ws, t):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["t"] == t:
            return frame
        raise AssertionError(f"expected {t}, got {frame}")


async def main(url, alice_token, bob_token):
    async with websockets.connect(url, subprotocols=["switchboard.v1.json"]) as alice, \
            websockets.connect(f"{url}?token={bob_token}") as bob:
        assert alice.subprotocol == "switchboard.v1.json", alice.subprotocol
        await alice.send(json.dumps({"t": "hello", "token": alice_token, "req": "py"}))
        welcome = await expect(alice, "welcome")
        assert welcome["user"] == "py-alice" and welcome["req"] == "py", welcome
        await bob.send(json.dumps({"t": "hello"}))
        assert (await expect(bob, "welcome"))["user"] == "py-bob"

        await alice.send(json.dumps({"t": "send", "to": "py-bob", "id": "py-1", "body": {"text": "héllo"}}))
        ack = await expect(alice, "ack")
        assert ack["conv"] == "dm:py-alice:py-bob" and ack["seq"] == 1 and ack["dup"] is False, ack
        msg = await expect(bob, "msg")
        assert msg["body"] == {"text": "héllo"} and msg["from"] == "py-alice" and msg["seq"] == 1, msg

        await bob.send(json.dumps({"t": "sync", "conv": ack["conv"], "after": 0, "req": "s"}))
        assert (await expect(bob, "msg"))["id"] == "py-1"
        synced = await expect(bob, "synced")
        assert synced["upto"] == 1 and synced["head"] == 1 and synced["more"] is False, synced

        await alice.send(json.dumps({"t": "ping", "req": "p"}))
        assert (await expect(alice, "pong"))["req"] == "p"
        await alice.close(code=1000)
        assert alice.close_code == 1000, alice.close_code
    print("OK")


asyncio.run(main(*sys.argv[1:4]))
