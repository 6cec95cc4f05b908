"""Governance on `flotilla up --governance`, as an OpenAI SDK user meets it.

    test_governance.py FLOTILLA STATE_DIR

Tenants, keys and policies are made with `flotilla ctl`; every request goes
through the official `openai` client (or, where the SDK cannot send what a
client might, plain urllib). Each check says what it proves; the run stops at
the first one that fails.
"""

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request

import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from flotilla_e2e import CLUSTERS, GATEWAYS, STATE, ctl  # noqa: E402

MODELS = ["chat-model", "code-model"]
# The promise: a change made with ctl is enforced by every gateway within
# one second.
WITHIN = 1.0


def client(gateway, key):
    return openai.OpenAI(base_url=f"http://{gateway}/v1", api_key=key,
                         max_retries=0, timeout=10)


def chat(gateway, key, model, **extra):
    return client(gateway, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}],
        max_tokens=4, **extra)


def outcome(gateway, key, model):
    """200, or the status of the SDK's error."""
    try:
        chat(gateway, key, model)
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def listed(gateway, key):
    """The models `GET /v1/models` lists for the key, or the status refusing it.
    It answers without calling a model, so polling it times the gateways, not
    the replicas."""
    try:
        return sorted(m.id for m in client(gateway, key).models.list())
    except openai.APIStatusError as e:
        return e.status_code


def until_everywhere(what, expected):
    """Seconds until every gateway lists `expected` for the key (or refuses it
    with that status); fails if that takes over WITHIN."""
    began = time.monotonic()
    while True:
        seen = {gw: listed(addr, KEY[0]) for gw, addr in GATEWAYS.items()}
        took = time.monotonic() - began
        if all(v == expected for v in seen.values()):
            assert took <= WITHIN, f"{what}: took {took:.2f}s, over {WITHIN}s"
            print(f"ok - {what}: every gateway in {took:.2f}s")
            return took
        if took > WITHIN:
            raise AssertionError(f"{what}: not everywhere within {WITHIN}s: {seen}")
        time.sleep(0.01)


def serves_everywhere(expected):
    """Every gateway answers each model with the expected status."""
    seen = {(gw, m): outcome(addr, KEY[0], m)
            for gw, addr in GATEWAYS.items() for m in expected}
    assert all(status == expected[m] for (_, m), status in seen.items()), seen


def metric(gateway_admin, line_prefix):
    body = urllib.request.urlopen(f"http://{gateway_admin}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return None


def raw_post(gateway, headers):
    body = json.dumps({"model": "chat-model",
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"http://{gateway}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def new_key(tenant):
    made = json.loads(ctl("key", "create", "--tenant", tenant, "-o", "json"))
    assert re.fullmatch(r"flk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", made["key"]), made
    return made["key"], made["id"]


KEY = [None]


def main():
    ctl("tenant", "create", "acme")
    KEY[0], key_id = new_key("acme")

    # A new key is known everywhere within a second; its tenant has no policy
    # yet, so it reaches nothing. A policy set with ctl then opens exactly what it
    # approves, on every gateway, within a second.
    until_everywhere("a new key is known; with no policy it may use nothing", [])
    serves_everywhere({"chat-model": 403, "code-model": 403})
    ctl("policy", "set", "acme", "--models", "chat-model")
    until_everywhere("policy set: chat-model approved, code-model not", ["chat-model"])
    serves_everywhere({"chat-model": 200, "code-model": 403})
    try:
        chat(GATEWAYS["b"], KEY[0], "code-model")
        raise AssertionError("code-model was served")
    except openai.PermissionDeniedError as e:
        assert e.status_code == 403
        assert "`code-model`" in e.message and "policy `acme`" in e.message, e.message
        assert e.body["code"] == "model_not_approved", e.body
    print("ok - 403 names the model and the policy, in the OpenAI error format")

    ctl("policy", "set", "acme", "--models", "chat-model,code-model")
    until_everywhere("policy widened: both models", MODELS)
    serves_everywhere({"chat-model": 200, "code-model": 200})

    # Keys: none, a wrong shape, a forged one; all 401 in the OpenAI format, and
    # the credentials never reach a replica (the gateway consumes them).
    for headers, why in [({}, "no tenant"),
                         ({"authorization": "Bearer flk_nope"}, "keys look like"),
                         ({"authorization": f"Bearer {KEY[0][:-4]}AAAA"}, "not known"),
                         ({"x-api-key": "sk-not-ours"}, "not known")]:
        status, body = raw_post(GATEWAYS["c"], headers)
        assert status == 401, (headers, status, body)
        assert body["error"]["code"] == "invalid_api_key", body
        assert why in body["error"]["message"], (why, body)
    status, _ = raw_post(GATEWAYS["c"], {"x-api-key": KEY[0]})
    assert status == 200, status
    print("ok - no key, a malformed key and a forged key get 401; x-api-key works too")

    # A revoked key stops working everywhere within a second.
    ctl("key", "revoke", key_id)
    until_everywhere("a revoked key is refused", 401)
    for gw, addr in GATEWAYS.items():
        try:
            chat(addr, KEY[0], "chat-model")
            raise AssertionError(f"gateway {gw} served a revoked key")
        except openai.AuthenticationError as e:
            assert "was revoked" in e.message, e.message
    print("ok - 401 says the key was revoked")
    revoked = KEY[0]
    KEY[0], _ = new_key("acme")
    until_everywhere("a second key is known", MODELS)

    # Requests a minute: per gateway, 429 with Retry-After past it.
    ctl("policy", "set", "acme", "--models", "chat-model,code-model",
        "--requests-per-minute", "3")
    time.sleep(WITHIN)
    gw = GATEWAYS["a"]
    for i in range(3):
        assert outcome(gw, KEY[0], "chat-model") == 200, f"request {i + 1} of 3"
    try:
        chat(gw, KEY[0], "chat-model")
        raise AssertionError("a 4th request a minute was admitted")
    except openai.RateLimitError as e:
        retry_after = int(e.response.headers["retry-after"])
        assert 1 <= retry_after <= 60, retry_after
        assert "3 requests a minute" in e.message, e.message
    print(f"ok - the 4th request in a minute gets 429, Retry-After {retry_after}s")

    # Tokens a minute, counted from each answer's usage: a stream's final chunk.
    ctl("policy", "set", "acme", "--models", "chat-model,code-model",
        "--tokens-per-minute", "100000")
    time.sleep(WITHIN)
    gw = GATEWAYS["b"]
    admin = next(c["gateway_admin"] for c in CLUSTERS if c["name"] == "b")
    tokens = 'flotilla_gateway_tokens_total{tenant="acme"}'
    before = metric(admin, tokens) or 0
    stream = chat(gw, KEY[0], "chat-model", stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens > 0, chunks[-1]
    spent = usage.total_tokens
    deadline = time.monotonic() + 5
    while metric(admin, tokens) != before + spent:
        assert time.monotonic() < deadline, (metric(admin, tokens), before, spent)
        time.sleep(0.05)
    print(f"ok - the gateway counted the {spent} tokens the stream's final chunk reported")

    # A budget just under one answer: the next request waits for it to refill.
    budget = spent - 1
    ctl("policy", "set", "acme", "--models", "chat-model,code-model",
        "--tokens-per-minute", str(budget))
    time.sleep(WITHIN)
    counted = metric(admin, tokens)
    list(chat(gw, KEY[0], "chat-model", stream=True, stream_options={"include_usage": True}))
    deadline = time.monotonic() + 5
    while metric(admin, tokens) == counted:
        assert time.monotonic() < deadline, "the second stream was not counted"
        time.sleep(0.05)
    try:
        chat(gw, KEY[0], "chat-model")
        raise AssertionError("a tenant past its token budget was admitted")
    except openai.RateLimitError as e:
        assert f"{budget} tokens a minute" in e.message, e.message
        assert int(e.response.headers["retry-after"]) >= 1
    print("ok - past its tokens a minute, a tenant gets 429 with Retry-After")
    ctl("policy", "set", "acme", "--models", "chat-model,code-model")
    time.sleep(WITHIN)

    # Fail-static: with every server frozen, a gateway killed and restarted still
    # serves, and still enforces, from the tables it kept on disk.
    servers = pids(" server ")
    gateway_a = pids(" gateway ", "--cluster a ")
    assert len(servers) == 3 and len(gateway_a) == 1, (servers, gateway_a)
    try:
        for pid in servers:
            os.kill(pid, signal.SIGSTOP)
        os.kill(gateway_a[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            restarted = pids(" gateway ", "--cluster a ")
            if restarted and restarted != gateway_a:
                try:
                    if outcome(GATEWAYS["a"], KEY[0], "chat-model") == 200:
                        break
                except openai.APIConnectionError:
                    pass
            assert time.monotonic() < deadline, "gateway a did not come back serving"
            time.sleep(0.2)
        assert outcome(GATEWAYS["a"], KEY[0], "code-model") == 200
        assert outcome(GATEWAYS["a"], revoked, "chat-model") == 401
        status, _ = raw_post(GATEWAYS["a"], {})
        assert status == 401, status
        print("ok - restarted while the registry is down, a gateway still admits the "
              "key and refuses a revoked key and no key")
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
    print("all governance checks passed")


def pids(*needles):
    """This run's processes whose command line holds every needle."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if STATE in cmd and all(n in cmd for n in needles):
            found.append(int(entry))
    return sorted(found)


if __name__ == "__main__":
    main()
