#!/usr/bin/env python3
"""Prints the comparison table from the JSON summaries benches/compare.sh wrote."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def best(name):
    path = os.path.join(out, "best-" + name)
    if not os.path.exists(path):
        return None
    text = open(path).read().strip()
    return load("scan-%s-%s" % (name, text)) if text else None


def fmt(value, unit="", digits=0):
    if value is None:
        return "–"
    if isinstance(value, float):
        return ("{:,.%df}" % digits).format(value) + unit
    return "{:,}".format(value) + unit


def ratio(a, b, invert=False):
    if a is None or b is None or a == 0 or b == 0:
        return "–"
    r = (b / a) if invert else (a / b)
    return "%.1f×" % r


rows = []
light_r, light_y = load("light-rollcall"), load("light-y")
if light_r and light_y:
    for q in ("p50", "p99"):
        a, b = light_r["latency_ms"][q], light_y["latency_ms"][q]
        rows.append(("3. light load latency %s (100 clients, rooms of 10, 10 Hz)" % q,
                     fmt(a, " ms", 2), fmt(b, " ms", 2), ratio(a, b, invert=True) + " lower" if a <= b else ratio(a, b) + " higher"))

paced = load("light-rollcall-paced")
if paced and light_y:
    a, b = paced["deliveries_per_server_cpu_s"], light_y["deliveries_per_server_cpu_s"]
    rows.append(("3b. light load, intervalMs 50: deliveries per server CPU-second (goal ≥ 3× y-websocket's)",
                 fmt(a), fmt(b), ratio(a, b)))
    rows.append(("3b. light load, intervalMs 50: delivery p50 / p99 (goal p99 ≤ 80 ms)",
                 "%s / %s" % (fmt(paced["latency_ms"]["p50"], " ms", 2), fmt(paced["latency_ms"]["p99"], " ms", 2)), "", ""))

best_r, best_y = best("rollcall"), best("y")
a = best_r and best_r["deliveries_per_server_cpu_s"]
b = best_y and best_y["deliveries_per_server_cpu_s"]
rows.append(("2. deliveries per server CPU-second, at the largest load with p99 ≤ 50 ms",
             fmt(a) + (" (%s clients)" % best_r["clients"] if best_r else ""),
             fmt(b) + (" (%s clients)" % best_y["clients"] if best_y else ""),
             ratio(a, b)))
a = best_r and best_r["deliveries_per_s"]
b = best_y and best_y["deliveries_per_s"]
rows.append(("   deliveries/s at that load", fmt(a), fmt(b), ratio(a, b)))

storm = load("storm-flush")
memory = load("storm-memory")
if storm:
    rows.append(("1. storm (flush): heartbeats/s in (goal 40,000)", fmt(storm["heartbeats_accepted_per_s"]), "", ""))
    rows.append(("1. storm (flush): deliveries/s out (goal 1,960,000)", fmt(storm["deliveries_per_s"]), "", ""))
    rows.append(("1. storm (flush): delivery p50 / p99 / p99.9 (goal p99 ≤ 50 ms)",
                 "%s / %s / %s" % (fmt(storm["latency_ms"]["p50"], " ms", 1), fmt(storm["latency_ms"]["p99"], " ms", 1), fmt(storm["latency_ms"]["p999"], " ms", 1)), "", ""))
    rows.append(("1. storm (flush): server CPU (cores) / RSS", "%s / %s" % (fmt(storm["server_cpu_cores"], "", 2), fmt(storm["server_rss_mib"], " MiB", 0)), "", ""))
if storm and memory:
    rows.append(("6. flush throughput / memory throughput (goal ≥ 80%)",
                 "%.0f%%" % (100.0 * storm["deliveries_per_s"] / max(memory["deliveries_per_s"], 1)), "", ""))
    rows.append(("   memory mode: deliveries/s, p99", "%s, %s" % (fmt(memory["deliveries_per_s"]), fmt(memory["latency_ms"]["p99"], " ms", 1)), "", ""))
    if storm.get("log_bytes_max") is not None:
        rows.append(("6. log size / live data, worst during the run (goal ≤ 2×)",
                     "%.2f× (log max %s bytes)" % (storm["log_to_live_max_ratio"], fmt(storm["log_bytes_max"])), "", ""))
    disk = os.path.join(out, "storm-flush.disk-kib")
    if os.path.exists(disk):
        rows.append(("   data directory on disk after the run", fmt(int(open(disk).read().strip())) + " KiB", "", ""))
churn = load("churn")
if churn and storm:
    rows.append(("5. churn: entries past their TTL afterwards (goal 0)", fmt(churn["entries_past_ttl"]), "", ""))
    rows.append(("5. churn: p99 vs storm p99 (goal within 20%)",
                 "%s vs %s" % (fmt(churn["latency_ms"]["p99"], " ms", 1), fmt(storm["latency_ms"]["p99"], " ms", 1)), "", ""))
idle, idle_y = load("idle"), load("idle-y")
if idle:
    rows.append((f"4. idle fleet, {idle['clients']:,} connections: RSS (goal ≤ 200 MiB at 20,000)", fmt(idle["server_rss_mib"], " MiB"),
                 fmt(idle_y and idle_y["server_rss_mib"], " MiB"), ratio(idle_y and idle_y["server_rss_mib"], idle["server_rss_mib"])))
    rows.append(("   RSS per connection (goal ≤ 10 KiB)", fmt(idle["server_rss_mib"] * 1024 / idle["clients"], " KiB", 1),
                 fmt(idle_y and idle_y["server_rss_mib"] * 1024 / idle_y["clients"], " KiB", 1), ""))
    rows.append(("4. idle fleet: server CPU (goal ≤ 5% of a core)", fmt(100 * (idle["server_cpu_cores"] or 0), " %", 1),
                 fmt(idle_y and 100 * (idle_y["server_cpu_cores"] or 0), " %", 1), ""))

width = max(len(r[0]) for r in rows)
print("| %s | Rollcall | y-websocket | ratio |" % "workload".ljust(width))
print("|%s|---|---|---|" % ("-" * (width + 2)))
for r in rows:
    print("| %s | %s | %s | %s |" % (r[0].ljust(width), r[1], r[2], r[3]))
