"""MCP routing on `flotilla up --governance`, as an MCP SDK user meets it.

    test_mcp.py FLOTILLA STATE_DIR

Tenants, keys and the MCP server's registration are made with `flotilla ctl`;
sessions and calls go through the official `mcp` client (or, for what a client
library never sends, plain urllib). The MCP server is `flotilla model`'s: two
replicas in cluster a, each knowing only the sessions it began. What the gateway
answers itself is checked against MCP's published schema (2025-11-25), through
the SDK's `mcp_types` models generated from it. Each check says what it proves;
the run stops at the first one that fails.
"""

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request

import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from flotilla_e2e import CLUSTERS, GATEWAYS, ctl  # noqa: E402

ADMIN = {c["name"]: c["gateway_admin"] for c in CLUSTERS}
TOOL_NOT_ALLOWED = -32003
WITHIN = 1.0


def new_key(tenant):
    ctl("tenant", "create", tenant)
    return json.loads(ctl("key", "create", "--tenant", tenant, "-o", "json"))["key"]


async def session_calls(gateway, key, calls):
    """One MCP session through `gateway` as the key's tenant: the tools it
    lists, then each (tool, arguments) of `calls` (an MCPError's code and
    message in place of a result)."""
    url = f"http://{gateway}/mcp"
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10)
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = sorted(t.name for t in (await session.list_tools()).tools)
            results = []
            for tool, arguments in calls:
                try:
                    r = await session.call_tool(tool, arguments)
                    results.append(r.content[0].text)
                except MCPError as e:
                    results.append((e.code, e.error.message))
            return listed, results


def run(gateway, key, calls):
    return asyncio.run(session_calls(gateway, key, calls))


def raw_post(gateway, key, body, session=None):
    headers = {"content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if session:
        headers["mcp-session-id"] = session
    req = urllib.request.Request(f"http://{gateway}/mcp", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, rpc_of(r.read()), r.headers.get("mcp-session-id")
    except urllib.error.HTTPError as e:
        return e.code, rpc_of(e.read()), None


def rpc_of(body):
    """The JSON-RPC message(s) of an answer: JSON, or an event stream's data."""
    text = body.decode()
    data = "".join(line[len("data: "):] for line in text.splitlines()
                   if line.startswith("data: "))
    return json.loads(data or text)


def schema_error(body):
    """A JSON-RPC error as MCP's schema defines it; its code."""
    return mcp_types.JSONRPCError.model_validate(body).error.code


def listed_tools(gateway, key):
    """The tools a fresh session lists, or the HTTP status refusing it."""
    try:
        return run(gateway, key, [])[0]
    except Exception as e:  # noqa: BLE001 - the SDK wraps HTTP refusals variously
        return repr(e)


def until_everywhere(what, key, expected):
    began = time.monotonic()
    while True:
        seen = {gw: listed_tools(addr, key) for gw, addr in GATEWAYS.items()}
        took = time.monotonic() - began
        if all(v == expected for v in seen.values()):
            print(f"ok - {what}: every gateway in {took:.2f}s")
            return took
        if took > 10:
            raise AssertionError(f"{what}: not everywhere within 10s: {seen}")
        time.sleep(0.05)


def metric_total(prefix):
    total = 0.0
    for admin in ADMIN.values():
        body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
        total += sum(float(line.split()[-1]) for line in body.splitlines()
                     if line.startswith(prefix))
    return total


ACME = new_key("acme")
OPS = new_key("ops")
ctl("mcp", "set", "tools", "--service", "tools-mcp", "--path-prefix", "/mcp",
    "--grant", "acme=whoami,echo", "--grant", "ops=*")
listing = ctl("mcp", "list")
assert "tools" in listing and "acme=whoami,echo" in listing, listing
print("ok - ctl mcp set registers the server; ctl mcp list shows its rule and grants")

until_everywhere("the registration reaches every gateway", ACME, ["echo", "whoami"])

# A session through a (local replicas) and through b (the east-west hop to a):
# every call reaches the replica that began the session, which alone knows it.
for cluster, gateway in GATEWAYS.items():
    tools, results = run(gateway, ACME, [("whoami", {})] * 10 + [("echo", {"text": "hi"})])
    assert tools == ["echo", "whoami"], tools
    assert len(set(results[:10])) == 1 and results[0].startswith("replica "), results
    assert results[10] == "hi", results
    print(f"ok - through gateway {cluster}: tools/list shows acme's 2 tools; "
          f"10 calls of one session all answered by {results[0]}")

# New sessions spread over both replicas. Each goes to the replica with the
# fewest requests in flight, and `up`'s own load (every model in turn, streams
# included) can keep one busy for a while: so until both have begun one, within
# 10 s.
began, replicas = time.monotonic(), []
while len(set(replicas)) < 2 and time.monotonic() - began < 10:
    replicas.append(run(GATEWAYS["a"], ACME, [("whoami", {})])[1][0])
assert len(set(replicas)) == 2, \
    f"{len(replicas)} new sessions in 10s did not spread over both replicas: {set(replicas)}"
print(f"ok - new sessions spread over {sorted(set(replicas))} ({len(replicas)} sessions)")

# A tool acme is not granted: a JSON-RPC error naming the tool and the tenant.
_, results = run(GATEWAYS["b"], ACME, [("delete_everything", {})])
code, message = results[0]
assert code == TOOL_NOT_ALLOWED, results
assert "`delete_everything`" in message and "tenant `acme`" in message, message
assert metric_total('flotilla_gateway_denied_total{tenant="acme",reason="tool_not_allowed"}') >= 1
print(f"ok - a tool not granted is refused: {message}")

# ops is granted "*": every tool, the dangerous one included.
tools, results = run(GATEWAYS["a"], OPS, [("delete_everything", {})])
assert tools == ["delete_everything", "echo", "whoami"], tools
assert results == ["deleted nothing (a stand-in)"], results
print("ok - a tenant granted * sees and calls every tool")

# Bad input, as no SDK sends it: refused by the gateway, never sent on.
status, body, session = raw_post(GATEWAYS["a"], ACME, json.dumps({
    "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}).encode())
assert status == 200 and session and session.startswith("fl1-"), (status, body, session)
status, body, _ = raw_post(GATEWAYS["a"], ACME, b'{"jsonrpc":"2.0","id":5,"method":"tools/list"}',
                           session)
listed = mcp_types.ListToolsResult.model_validate(
    mcp_types.JSONRPCResponse.model_validate(body).result)
assert sorted(t.name for t in listed.tools) == ["echo", "whoami"], body
status, body, _ = raw_post(GATEWAYS["a"], ACME, b"{not json", session)
assert status == 400 and schema_error(body) == -32700, (status, body)
status, body, _ = raw_post(GATEWAYS["a"], ACME, b'{"id": 1, "method": "tools/list"}', session)
assert status == 400 and schema_error(body) == -32600, (status, body)
batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
          "params": {"name": "echo", "arguments": {"text": "x"}}},
         {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
          "params": {"name": "delete_everything", "arguments": {}}}]
status, body, _ = raw_post(GATEWAYS["a"], ACME, json.dumps(batch).encode(), session)
assert status == 200 and [schema_error(m) for m in body] == [TOOL_NOT_ALLOWED] * 2, body
assert body[0]["error"]["message"].startswith("not sent"), body
status, body, _ = raw_post(GATEWAYS["a"], None, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
assert status == 401 and schema_error(body), (status, body)
print("ok - a filtered tools/list, and the gateway's own errors, match MCP's schema")
print("ok - not JSON (-32700), not JSON-RPC (-32600), a batch mixing a forbidden "
      "tool (refused whole) and no key (401)")

# A change made with ctl: acme loses echo everywhere.
ctl("mcp", "set", "tools", "--service", "tools-mcp", "--path-prefix", "/mcp",
    "--grant", "acme=whoami", "--grant", "ops=*")
took = until_everywhere("a narrowed grant is enforced", ACME, ["whoami"])
assert took <= WITHIN, f"took {took:.2f}s"
_, results = run(GATEWAYS["b"], ACME, [("echo", {"text": "hi"})])
assert results[0][0] == TOOL_NOT_ALLOWED, results

ctl("mcp", "delete", "tools")
status, _, _ = raw_post(GATEWAYS["a"], ACME, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
deadline = time.monotonic() + 10
while status != 404 and time.monotonic() < deadline:
    time.sleep(0.05)
    status, _, _ = raw_post(GATEWAYS["a"], ACME, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
assert status == 404, status
print("ok - ctl mcp delete: the path routes nowhere (404)")
print("all MCP checks passed")
