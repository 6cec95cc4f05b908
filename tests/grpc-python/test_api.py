#!/usr/bin/env python3
"""Flotilla's gRPC API from a client that another toolchain generated from proto/.

Run by run.sh, which generates the stubs with grpcio-tools, starts a one-server
federation over mTLS and passes the addresses and paths below. Prints one line per
check and exits non-zero on the first failure.
"""

import argparse
import importlib
import pathlib
import sys
import time

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ARGS = None
CHECKS = 0


def ok(what):
    global CHECKS
    CHECKS += 1
    print(f"ok   {what}", flush=True)


def fail(what):
    print(f"FAIL {what}", flush=True)
    sys.exit(1)


def check(cond, what, detail=""):
    if not cond:
        fail(f"{what}{': ' + detail if detail else ''}")
    ok(what)


def expect_error(what, code, call, *, mentions=()):
    """Runs `call`, which must fail with `code`; the message must contain `mentions`."""
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            fail(f"{what}: expected {code.name}, got {e.code().name}: {e.details()}")
        for m in mentions:
            if m not in (e.details() or ""):
                fail(f"{what}: the message {e.details()!r} does not mention {m!r}")
        ok(f"{what} -> {code.name}: {e.details()}")
        return e
    fail(f"{what}: expected {code.name}, the call succeeded")


def details(error, kind):
    """The google.rpc details of type `kind` (error_details_pb2) that `error` carries."""
    status = rpc_status.from_call(error)
    found = []
    for detail in (status.details if status else ()):
        message = kind()
        if detail.Unpack(message):
            found.append(message)
    return found


def error_info(error):
    found = details(error, error_details_pb2.ErrorInfo)
    return found[0] if found else None


def bad_request(error):
    return [v for b in details(error, error_details_pb2.BadRequest) for v in b.field_violations]


def without_etag(message):
    """A copy of `message` with its etag cleared, to compare with what was sent."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.etag = ""
    return copy


def read(path):
    return pathlib.Path(path).read_bytes()


def channel(cert=None, key=None, tls=True):
    if not tls:
        return grpc.insecure_channel(ARGS.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ARGS.ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    return grpc.secure_channel(ARGS.target, creds)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port of the server")
    p.add_argument("--stubs", required=True, help="the directory grpc_tools.protoc wrote")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True, help="the admin identity's certificate")
    p.add_argument("--key", required=True, help="the admin identity's key")
    p.add_argument("--federation", required=True)
    p.add_argument("--foreign-cert", help="a client certificate from another CA")
    p.add_argument("--foreign-key")
    ARGS = p.parse_args()
    sys.path.insert(0, ARGS.stubs)

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool

    wl = importlib.import_module("flotilla.v1.workloads_pb2")
    wl_grpc = importlib.import_module("flotilla.v1.workloads_pb2_grpc")
    fed = importlib.import_module("flotilla.v1.federation_pb2")
    fed_grpc = importlib.import_module("flotilla.v1.federation_pb2_grpc")

    # Every service the generated stubs know of, from every proto/flotilla/**.proto.
    stub_services = {}
    for f in sorted(pathlib.Path(ARGS.stubs).rglob("*_pb2.py")):
        mod = ".".join(f.relative_to(ARGS.stubs).with_suffix("").parts)
        for s in importlib.import_module(mod).DESCRIPTOR.services_by_name.values():
            stub_services[s.full_name] = s
    check(
        "flotilla.v1.WorkloadService" in stub_services,
        f"stubs generated for {len(stub_services)} services",
        ", ".join(sorted(stub_services)),
    )

    admin = channel(ARGS.cert, ARGS.key)
    grpc.channel_ready_future(admin).result(timeout=10)

    # --- health -------------------------------------------------------------------
    health = health_pb2_grpc.HealthStub(admin)
    SERVING = health_pb2.HealthCheckResponse.SERVING
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    check(r.status == SERVING, "health Check(\"\") is SERVING", str(r))
    for name in ("flotilla.v1.WorkloadService", "flotilla.v1.FederationService"):
        r = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        check(r.status == SERVING, f"health Check({name}) is SERVING", str(r))
    expect_error(
        "health Check of an unknown service",
        grpc.StatusCode.NOT_FOUND,
        lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5),
    )

    # --- reflection -----------------------------------------------------------------
    db = ProtoReflectionDescriptorDatabase(admin)
    listed = set(db.get_services())
    public = {n for n in stub_services if n.startswith(("flotilla.v1.", "flotilla.v1alpha1."))}
    missing = public - listed
    check(not missing, f"reflection lists {len(listed)} services, all public flotilla ones among them",
          f"missing {sorted(missing)}; listed {sorted(listed)}")
    check("grpc.health.v1.Health" in listed, "reflection lists grpc.health.v1.Health", str(sorted(listed)))
    pool = DescriptorPool(db)
    for name in sorted(public):
        served = pool.FindServiceByName(name)
        ours = stub_services[name]
        served_m = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in served.methods}
        ours_m = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in ours.methods}
        check(served_m == ours_m, f"reflection's {name} has the methods of proto/ ({len(ours_m)})",
              f"served {served_m} vs proto {ours_m}")
    internal = {n for n in listed if n.startswith(("flotilla.registry.", "flotilla.raft."))}
    check(not internal, "reflection lists no internal service (flotilla.registry, flotilla.raft)",
          str(sorted(internal)))
    served_wl = pool.FindMessageTypeByName("flotilla.v1.Workload")
    check([f.name for f in served_wl.fields] == [f.name for f in wl.Workload.DESCRIPTOR.fields],
          "reflection's flotilla.v1.Workload has the fields of proto/")

    # --- federation -----------------------------------------------------------------
    federation = fed_grpc.FederationServiceStub(admin)
    deadline = time.monotonic() + 15
    while True:
        f = federation.GetFederation(fed.GetFederationRequest(), timeout=5)
        if f.leader_id != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(f.name == ARGS.federation, f"GetFederation names the federation {ARGS.federation!r}", str(f))
    check(len(f.members) == 1 and f.members[0].voter, "GetFederation lists one voting member", str(f))
    check(f.leader_id == f.members[0].node_id, f"GetFederation's leader is that member ({f.leader_id})", str(f))
    clusters = federation.ListClusters(fed.ListClustersRequest(), timeout=5)
    ok(f"ListClusters answers ({len(clusters.clusters)} clusters: "
       f"{[c.spec.name for c in clusters.clusters]})")
    stale = federation.ListClusters(fed.ListClustersRequest(allow_stale=True), timeout=5)
    check(len(stale.clusters) == len(clusters.clusters), "ListClusters(allow_stale) answers alike")

    # --- workloads ------------------------------------------------------------------
    workloads = wl_grpc.WorkloadServiceStub(admin)
    w = wl.Workload(
        name="pyclient-llama",
        model="meta-llama/Llama-3.1-8B-Instruct",
        replicas=wl.Replicas(min=1, max=2),
        gpu=wl.GpuNeed(count=1, min_memory_mib=40000, models=["NVIDIA H100 80GB HBM3"]),
        constraints=wl.Constraints(regions=["us-east"], preferred_regions=[wl.RegionPreference(region="us-east", weight=10)]),
        priority=5,
        slo=wl.Slo(ttft_ms=500, e2e_ms=5000),
        mobility=wl.Mobility(movable=True, min_dwell_ms=60000),
    )
    applied = workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=w), timeout=10)
    check(applied.log_index > 0, f"ApplyWorkload accepted it at log index {applied.log_index}")
    got = workloads.GetWorkload(wl.GetWorkloadRequest(name=w.name), timeout=5)
    check(got.workload.etag != "", f"GetWorkload carries the workload's etag ({got.workload.etag!r})")
    check(without_etag(got.workload) == w, "GetWorkload returns the workload as applied",
          f"got {got.workload} sent {w}")
    check(got.applied_index >= applied.log_index,
          f"GetWorkload's applied_index ({got.applied_index}) >= the write's log index")
    stale = workloads.GetWorkload(wl.GetWorkloadRequest(name=w.name, allow_stale=True), timeout=5)
    check(without_etag(stale.workload) == w, "GetWorkload(allow_stale) returns it too")

    # Applying again updates it in place.
    w2 = wl.Workload()
    w2.CopyFrom(w)
    w2.replicas.max = 3
    again = workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=w2), timeout=10)
    check(again.log_index > applied.log_index, "ApplyWorkload of a changed workload updates it")
    lst = workloads.ListWorkloads(wl.ListWorkloadsRequest(), timeout=5)
    mine = [x for x in lst.workloads if x.name == w.name]
    check(len(mine) == 1 and mine[0].replicas.max == 3,
          f"ListWorkloads lists it once, updated ({len(lst.workloads)} workloads)", str(lst))

    # --- etags: a write based on a stale read is ABORTED, never a silent overwrite ------
    read_at = mine[0].etag
    first, second = wl.Workload(), wl.Workload()
    first.CopyFrom(mine[0])
    first.priority = 7
    second.CopyFrom(mine[0])
    second.priority = 9
    r = workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=first), timeout=10)
    check(r.log_index > again.log_index, "ApplyWorkload at the etag it read succeeds")
    conflict = expect_error("ApplyWorkload from the same, now stale, read", grpc.StatusCode.ABORTED,
                 lambda: workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=second), timeout=10),
                 mentions=("changed since it was read",))
    info = error_info(conflict)
    check(info is not None and info.reason == "ETAG_MISMATCH" and info.domain == "flotilla.v1"
          and info.metadata.get("expected_etag") == read_at,
          "... and its google.rpc.ErrorInfo says ETAG_MISMATCH and names the etag sent", str(info))
    now = workloads.GetWorkload(wl.GetWorkloadRequest(name=w.name), timeout=5).workload
    check(now.priority == 7 and now.etag != read_at,
          "the first write stands and the etag moved", str(now))

    # --- paged lists: followed by next_page_token, in key order ------------------------
    for i in range(3):
        extra = wl.Workload()
        extra.CopyFrom(w)
        extra.name = f"pyclient-page-{i}"
        workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=extra), timeout=10)
    names, token, pages = [], "", 0
    while True:
        page = workloads.ListWorkloads(wl.ListWorkloadsRequest(page_size=2, page_token=token), timeout=5)
        pages += 1
        check(len(page.workloads) <= 2, f"page {pages} holds at most 2 workloads")
        names += [x.name for x in page.workloads]
        token = page.next_page_token
        if not token:
            break
    check(pages >= 2 and names == sorted(names) and len(names) == len(set(names))
          and all(f"pyclient-page-{i}" in names for i in range(3)),
          f"ListWorkloads pages through {len(names)} workloads in {pages} pages, in order", str(names))
    for i in range(3):
        workloads.DeleteWorkload(wl.DeleteWorkloadRequest(name=f"pyclient-page-{i}"), timeout=10)

    # --- a placement watch resumes from a revision -----------------------------------
    cap = importlib.import_module("flotilla.v1.capacity_pb2")
    cap_grpc = importlib.import_module("flotilla.v1.capacity_pb2_grpc")
    pl = importlib.import_module("flotilla.v1.placements_pb2")
    pl_grpc = importlib.import_module("flotilla.v1.placements_pb2_grpc")
    federation.RegisterCluster(fed.RegisterClusterRequest(
        spec=fed.ClusterSpec(name="py-east", region="us-east")), timeout=10)
    capacity = cap_grpc.CapacityServiceStub(admin)
    capacity.ReportCapacity(cap.ReportCapacityRequest(cluster="py-east", nodes=[cap.NodeReport(
        name="n1", devices=[cap.DeviceReport(uuid="GPU-py-0", model="NVIDIA H100 80GB HBM3",
                                             memory_total_mib=81559, healthy=True)])]), timeout=10)
    # The scheduler places pyclient-llama there (the one GPU that fits it).
    placements = pl_grpc.PlacementServiceStub(admin)

    def until_synced(from_revision):
        """The watch's messages up to its synced marker, and the marker's revision."""
        stream = placements.WatchPlacements(pl.WatchPlacementsRequest(
            cluster="py-east", progress=True, from_revision=from_revision), timeout=10)
        seen = []
        for m in stream:
            if m.synced:
                stream.cancel()
                return seen, m.revision
            seen.append(m)
        raise AssertionError("the watch ended before it was in sync")

    deadline = time.monotonic() + 15
    while True:
        first, revision = until_synced(0)
        if first or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check([m.placement.workload for m in first] == [w.name] and revision > 0,
          f"WatchPlacements(cluster) sends the cluster's placement, then synced at revision {revision}",
          str(first))
    replica = first[0].placement.replicas[0]
    capacity.Heartbeat(cap.HeartbeatRequest(cluster="py-east"), timeout=10)
    placements.ReportReplicaPhase(pl.ReportReplicaPhaseRequest(
        workload=w.name, replica=replica.id, phase=pl.PHASE_READY,
        endpoint="127.0.0.1:9"), timeout=10)
    missed, now = until_synced(revision)
    check(len(missed) == 1 and missed[0].placement.replicas[0].phase == pl.PHASE_READY
          and missed[0].revision > revision and now >= missed[0].revision,
          "a watch resumed from that revision sends only what changed since (the replica Ready)",
          str(missed))
    nothing, _ = until_synced(now)
    check(not nothing, "a watch resumed from the latest revision sends nothing but synced", str(nothing))
    listed = placements.ListPlacements(pl.ListPlacementsRequest(cluster="py-east"), timeout=5)
    check(listed.revision == now, f"ListPlacements gives the revision to watch from ({listed.revision})")

    # --- errors ---------------------------------------------------------------------
    bad = wl.Workload()
    bad.CopyFrom(w)
    bad.name = "pyclient-bad"
    bad.replicas.min, bad.replicas.max = 3, 1
    e = expect_error("ApplyWorkload with replicas.min > replicas.max",
                     grpc.StatusCode.INVALID_ARGUMENT,
                     lambda: workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=bad), timeout=10),
                     mentions=("pyclient-bad", "replicas.min"))
    field = dict(e.trailing_metadata() or ()).get("flotilla-field")
    check(field == "replicas.min", f"... and flotilla-field metadata names the field ({field!r})")
    violations = bad_request(e)
    check([v.field for v in violations] == ["replicas.min"],
          "... and so does its google.rpc.BadRequest", str(violations))

    bad2 = wl.Workload()
    bad2.CopyFrom(w)
    bad2.name = "Not_A_DNS_Label"
    expect_error("ApplyWorkload with an invalid name", grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=bad2), timeout=10),
                 mentions=("name",))

    bad3 = wl.Workload(name="pyclient-nogpu", model="m", replicas=wl.Replicas(min=1, max=1))
    expect_error("ApplyWorkload without gpu", grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: workloads.ApplyWorkload(wl.ApplyWorkloadRequest(workload=bad3), timeout=10),
                 mentions=("gpu",))
    expect_error("ApplyWorkload without a workload", grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: workloads.ApplyWorkload(wl.ApplyWorkloadRequest(), timeout=10),
                 mentions=("workload",))
    names = [x.name for x in workloads.ListWorkloads(wl.ListWorkloadsRequest(), timeout=5).workloads]
    check(names.count(w.name) == 1 and not any(n in names for n in ("pyclient-bad", "pyclient-nogpu")),
          "rejected workloads were not stored", str(names))

    expect_error("GetWorkload of an unknown name", grpc.StatusCode.NOT_FOUND,
                 lambda: workloads.GetWorkload(wl.GetWorkloadRequest(name="no-such-workload"), timeout=5),
                 mentions=("no-such-workload",))
    expect_error("DeleteWorkload of an unknown name", grpc.StatusCode.NOT_FOUND,
                 lambda: workloads.DeleteWorkload(wl.DeleteWorkloadRequest(name="no-such-workload"), timeout=5),
                 mentions=("no-such-workload",))

    deleted = workloads.DeleteWorkload(wl.DeleteWorkloadRequest(name=w.name), timeout=10)
    check(deleted.log_index > again.log_index, f"DeleteWorkload accepted at log index {deleted.log_index}")
    deadline = time.monotonic() + 10
    while True:
        names = [x.name for x in workloads.ListWorkloads(wl.ListWorkloadsRequest(), timeout=5).workloads]
        if w.name not in names or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(w.name not in names, "ListWorkloads no longer lists it", str(names))
    expect_error("GetWorkload after DeleteWorkload", grpc.StatusCode.NOT_FOUND,
                 lambda: workloads.GetWorkload(wl.GetWorkloadRequest(name=w.name), timeout=5),
                 mentions=(w.name,))
    admin.close()

    # --- callers without the admin identity ------------------------------------------
    anon = channel()  # TLS, the federation CA trusted, but no client certificate
    expect_error("ListWorkloads without a client certificate", grpc.StatusCode.UNAUTHENTICATED,
                 lambda: wl_grpc.WorkloadServiceStub(anon).ListWorkloads(wl.ListWorkloadsRequest(), timeout=5))
    expect_error("ApplyWorkload without a client certificate", grpc.StatusCode.UNAUTHENTICATED,
                 lambda: wl_grpc.WorkloadServiceStub(anon).ApplyWorkload(wl.ApplyWorkloadRequest(workload=w), timeout=5))
    expect_error("GetFederation without a client certificate", grpc.StatusCode.UNAUTHENTICATED,
                 lambda: fed_grpc.FederationServiceStub(anon).GetFederation(fed.GetFederationRequest(), timeout=5))
    r = health_pb2_grpc.HealthStub(anon).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    check(r.status == SERVING, "health answers without a client certificate (load balancers, probes)")
    try:
        n = len(ProtoReflectionDescriptorDatabase(anon).get_services())
        print(f"note reflection answers without a client certificate ({n} services)", flush=True)
    except grpc.RpcError as e:
        print(f"note reflection without a client certificate -> {e.code().name}", flush=True)
    anon.close()

    plain = channel(tls=False)
    expect_error("a plaintext channel to the mTLS server", grpc.StatusCode.UNAVAILABLE,
                 lambda: wl_grpc.WorkloadServiceStub(plain).ListWorkloads(wl.ListWorkloadsRequest(), timeout=5))
    plain.close()

    if ARGS.foreign_cert:
        foreign = channel(ARGS.foreign_cert, ARGS.foreign_key)
        expect_error("a client certificate from another CA", grpc.StatusCode.UNAVAILABLE,
                     lambda: wl_grpc.WorkloadServiceStub(foreign).ListWorkloads(wl.ListWorkloadsRequest(), timeout=5))
        foreign.close()

    print(f"all {CHECKS} checks passed", flush=True)


if __name__ == "__main__":
    main()
