#!/usr/bin/env python3
"""Turn the load generator's JSON results (bench/results/*.json) into docs/BENCHMARKS.md and
the latency-against-load plot (docs/bench/latency-vs-load.png, drawn with gnuplot).

    python3 bench/report.py [RESULTS_DIR] [OUTPUT_MD]

Every table puts palaver beside each peer measured in the same run, with the ratio."""
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "results")
OUTPUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs", "BENCHMARKS.md")
PLOT_DIR = os.path.join(os.path.dirname(OUTPUT), "bench")


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def num(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "–"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f} M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f} k"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.{digits}f}"


def ratio(ours, theirs, higher_is_better=True):
    try:
        if not ours or not theirs:
            return "–"
        r = ours / theirs if higher_is_better else theirs / ours
        return f"**{r:.2f}×**"
    except (TypeError, ZeroDivisionError):
        return "–"


def command_block(doc):
    cmd = doc.get("command", "")
    # Paths differ between machines: show the binary by name.
    cmd = cmd.replace(os.environ.get("CARGO_TARGET_DIR", "/work/target") + "/release/", "")
    return f"```\n{cmd}\n```\n"


def table(header, rows):
    out = "| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
    for row in rows:
        out += "| " + " | ".join(str(c) for c in row) + " |\n"
    return out


def lat(row, key):
    return row.get("latency", {}).get(key)


def cpu_cells(row):
    """The server's CPU per delivery and per message, the share of a core it used while the
    publisher ran, and the load generator's own share, marked where it was saturated."""
    loadgen = row.get("loadgen_cpu_pct")
    mark = ""
    if row.get("loadgen_saturated"):
        mark = " **saturated**"
    elif row.get("shared_cores"):
        mark = " (shared CPUs)"
    busy = "–"
    if row.get("server_cpus_busy_pct") is not None and row.get("loadgen_cpus_busy_pct") is not None:
        busy = f"{row['server_cpus_busy_pct']:.0f} / {row['loadgen_cpus_busy_pct']:.0f}"
    return [num(row.get("server_cpu_us_per_delivery"), 3), num(row.get("server_cpu_us_per_message"), 1),
            num(row.get("server_cpu_pct"), 0), ("–" if loadgen is None else f"{loadgen:.0f}") + mark, busy]


CPU_HEADERS = ["server CPU µs/delivery", "µs/message", "server % of a core", "loadgen % CPU",
               "their CPUs busy in all, server's / loadgen's %"]


def section_idle(doc):
    rows = doc["rows"]
    pal = next((r for r in rows if r["kind"] == "palaver"), None)
    body = (
        f"### Idle connections ({doc.get('n')} per server)\n\n"
        "Resident memory (`VmRSS` of the server process) before the connections and after them, "
        "divided by the connections open. palaver's connections are authenticated (each has its "
        "session, its hub registration and its delivery queue); NATS connections have sent "
        "`CONNECT` and subscribed to a subject of their own; Socket.IO ones are connected to the "
        "namespace; ejabberd ones have logged in (SASL ANONYMOUS) and bound a resource. palaver's "
        "accounts are made beforehand by `loadgen accounts` against the same data directory and the "
        "node is restarted, so the measured process never ran argon2 (whose freed buffers would sit "
        "in its allocator and hide connection memory). Connections open in two rounds, a tenth and "
        "then the rest; the marginal column is the second round's cost per connection.\n\n"
    )
    out = []
    for r in rows:
        per = r.get("kib_per_connection")
        out.append([
            r["target"], r.get("connections"), r.get("failed"),
            num(r.get("rss_before_kib", 0) / 1024), num(r.get("rss_after_kib", 0) / 1024),
            num(per, 2), num(r.get("marginal_kib_per_connection"), 2), "(baseline)" if r is pal else ratio(pal and pal.get("kib_per_connection"), per, higher_is_better=False),
        ])
    body += table(["server", "connections", "failed", "RSS before (MiB)", "RSS after (MiB)", "KiB per connection",
                   "marginal KiB", "peer ÷ palaver (higher: palaver leaner)"], out)
    if pal:
        target = 12 * 1000 / 1024
        per = pal.get("kib_per_connection") or 0
        body += f"\nTarget: at most 12 KB (≈ {target:.1f} KiB) per idle authenticated connection: **{'met' if per <= target else 'not met'}** ({per:.2f} KiB).\n"
    return body + "\n" + command_block(doc)


def section_fanout(doc, title, intro, ratios=True):
    rows = [r for r in doc["rows"] if "error" not in r]
    order = {}
    for r in rows:
        order.setdefault(r["target"], len(order))
    rounds = doc.get("rounds") or 1
    if rounds > 1:
        # Each server's median round per rate (loadgen --repeat), with every round beside it.
        rows = [r for r in rows if r.get("median")]
        intro += (f" The servers took turns, {rounds} rounds (each set up afresh, then every rate); the table shows each "
                  "server's median round (by deliveries/s at `max`, by p99 at a fixed rate), and the rounds' "
                  "deliveries/s and p99 below it.")
    body = f"### {title}\n\n{intro}\n\n"
    rates = []
    for r in rows:
        if r["offered_rate"] not in rates:
            rates.append(r["offered_rate"])
    out = []
    for rate in rates:
        same = [r for r in rows if r["offered_rate"] == rate]
        same.sort(key=lambda r: order[r["target"]])  # the servers in the order they ran
        pal = next((r for r in same if r["kind"] == "palaver"), None)
        for r in same:
            row = [
                "max (window %d)" % r.get("window", 0) if not rate else f"{num(rate, 0)}/s",
                r["target"], r["receivers"], num(r["published_per_s"]), num(r["deliveries_per_s"]),
                f"{r['delivered_pct']:.1f} %", num(lat(r, "p50_ms"), 2), num(lat(r, "p99_ms"), 2), num(lat(r, "p999_ms"), 2),
            ] + cpu_cells(r)
            if ratios:
                row.append("(baseline)" if r is pal else ratio(pal and pal["deliveries_per_s"], r["deliveries_per_s"]))
            out.append(row)
    headers = ["offered", "server", "receivers", "published/s", "deliveries/s", "delivered", "p50 ms", "p99 ms", "p999 ms"]
    headers += CPU_HEADERS
    if ratios:
        headers.append("palaver ÷ peer deliveries/s")
    body += table(headers, out)
    if rounds > 1:
        body += "\nEvery round:\n\n"
        for r in sorted(rows, key=lambda r: (r["offered_rate"] == 0, order[r["target"]])):
            rate = "max" if not r["offered_rate"] else f"{num(r['offered_rate'], 0)}/s"
            per_s = " / ".join(num(v) for v in r.get("rounds_deliveries_per_s", []))
            p99 = " / ".join(num(v, 2) for v in r.get("rounds_p99_ms", []))
            body += f"- {r['target']} @{rate}: deliveries/s {per_s}; p99 ms {p99}\n"
    errors = [r for r in doc["rows"] if "error" in r]
    for r in errors:
        body += f"\n{r['target']}: {r['error']}\n"
    return body + "\n" + command_block(doc)


def node_split(row):
    """palaver's mean append wait / commit / delivery wait in a phase, from its histograms."""
    node = row.get("node_ms") or {}
    if not node:
        return "–"
    return " / ".join(num(node.get(k), 2) for k in ("append_wait_ms", "commit_ms", "delivery_wait_ms"))


def section_saturation(doc):
    summary = doc.get("summary", [])
    pal = next((s for s in summary if s["kind"] == "palaver"), None)
    body = (
        "### Saturation\n\n"
        f"The publish rate into one room of {doc.get('n')} receivers rises by a constant factor per "
        f"step; a step holds while p99 stays under the bound, the publisher keeps its rate and ≥ 99 % "
        "arrive. A step that fails is run once more (this shared machine stalls now and then, and one "
        "stall of 100 ms fails a step of a few dozen messages); it fails only if it fails twice in a row "
        "(both runs are listed). With `--full` (as here) every step runs, for the curve, and the highest rate "
        "that held is the last one before the first step that failed; without it the first failed step ends "
        "the sweep. Then one more run at half of the highest rate that held (target for palaver: "
        "p99 there at or below NATS's at its own half). Each send is stamped with the earlier of its *scheduled* and its actual "
        "time, so a publisher held back by the server shows up as latency (no coordinated omission); "
        "a send may leave up to 2 ms ahead of its schedule (tokio's timer wakes at a millisecond's "
        "granularity) and is then measured from when it left; a publisher more than a second behind "
        "skips the overdue sends. The bound is 50 ms, far above either server's p99 at "
        "any step when nothing stalls (under 10 ms): the sweep looks for the rate a server stops keeping "
        "up with, and this shared machine stalls now and then for tens of milliseconds (its disk, for "
        "palaver, which syncs every commit; the scheduling of two cores shared with the load generator, "
        "for both).\n\n"
    )
    out = []
    for s in summary:
        tried = [r["offered_rate"] for r in doc["rows"] if r["target"] == s["target"] and str(r.get("phase", "")).startswith("sweep")]
        at_top = tried and s.get("saturation_rate") is not None and s["saturation_rate"] >= max(tried)
        mark = "≥ " if at_top else ""
        out.append([s["target"], s["receivers"], mark + num(s.get("saturation_rate")), mark + num(s.get("saturation_deliveries_per_s")),
                    num(s.get("p99_at_half_ms"), 2), s.get("p99_bound_ms"),
                    "(baseline)" if s is pal else ratio(pal and pal.get("saturation_deliveries_per_s"), s.get("saturation_deliveries_per_s"))])
    body += table(["server", "receivers", "highest msgs/s in", "deliveries/s there", "p99 at half (ms)", "p99 bound (ms)",
                   "palaver ÷ peer"], out)
    body += "\n(≥: the server held at the highest step tried.)\n\nEvery step:\n\n"
    steps = []
    for r in doc["rows"]:
        steps.append([r["target"], r.get("phase", ""), num(r["offered_rate"]), num(r["deliveries_per_s"]),
                      num(lat(r, "p50_ms"), 2), num(lat(r, "p99_ms"), 2), num(lat(r, "p999_ms"), 2),
                      f"{r['delivered_pct']:.1f} %", "yes" if r.get("holds") else ("–" if r.get("phase") == "half" else "no"),
                      num((r.get("publish_late") or {}).get("p99_ms"), 2)] + cpu_cells(r) + [node_split(r)])
    body += table(["server", "phase", "msgs/s in", "deliveries/s", "p50 ms", "p99 ms", "p999 ms", "delivered", "holds",
                   "publisher late p99 ms"] + CPU_HEADERS + ["node: append wait / commit / delivery wait (mean ms)"], steps)
    body += ("\n*Publisher late* is the load generator's own share: how long after its scheduled time a "
             "send left, which counts in that "
             "server's latency; a large figure there means the server held the publisher back (its window of "
             "unanswered sends was full).\n")
    body += ("\nThe last column is palaver's own account of each step, from its latency histograms on "
             "`/metrics` (README, Operations) read before and after the step: how long a message waited in its "
             "room for the commit before it, how long its commit took (sync to disk included), and how long "
             "delivered frames waited in a connection's queue for its session. The rest of the publish→deliver "
             "time is outside those three: the sockets and WebSocket layers of both ends, the publisher's "
             "session and the load generator's own scheduling.\n")
    if plot_saturation(doc):
        body += "\n![latency against load](bench/latency-vs-load.png)\n"
    return body + "\n" + command_block(doc)


def plot_saturation(doc):
    if not shutil.which("gnuplot"):
        return False
    os.makedirs(PLOT_DIR, exist_ok=True)
    series = {}
    for r in doc["rows"]:
        if not str(r.get("phase", "")).startswith("sweep"):
            continue
        series.setdefault(r["target"], []).append((r["deliveries_per_s"], lat(r, "p50_ms"), lat(r, "p99_ms")))
    if not series:
        return False
    data = os.path.join(RESULTS, "saturation.dat")
    with open(data, "w") as f:
        for name, points in series.items():
            f.write(f'"{name}"\n')
            for x, p50, p99 in sorted(points):
                f.write(f"{x} {p50} {p99}\n")
            f.write("\n\n")
    png = os.path.join(PLOT_DIR, "latency-vs-load.png")
    plots = []
    for i, name in enumerate(series):
        plots.append(f"'{data}' index {i} using 1:3 with linespoints lw 2 title '{name} p99'")
        plots.append(f"'{data}' index {i} using 1:2 with linespoints dt 2 title '{name} p50'")
    script = f"""
set terminal pngcairo size 900,540 noenhanced font ',10'
set output '{png}'
set title 'publish→deliver latency against load (one room, {doc.get("n")} receivers)'
set xlabel 'deliveries per second'
set ylabel 'latency (ms)'
set logscale y
set logscale x
set grid
set key top left
plot {", ".join(plots)}
"""
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        print(f"gnuplot failed: {err}", file=sys.stderr)
        return False
    return True


def section_many(doc):
    rows = doc["rows"]
    pal = next((r for r in rows if r["kind"] == "palaver"), None)
    body = (
        f"### Many rooms and direct conversations\n\n"
        f"{doc.get('rooms')} rooms of {doc.get('size')} members; every member also has a direct "
        f"conversation with one other user, and posts {doc.get('rate')} message(s) per second, "
        "alternating between its room and its direct conversation.\n\n"
    )
    out = []
    for r in rows:
        out.append([r["target"], r["connections"], num(r["published_per_s"]), num(r["deliveries_per_s"]),
                    f"{r['delivered_pct']:.1f} %", num(lat(r, "p50_ms"), 2), num(lat(r, "p99_ms"), 2), num(lat(r, "p999_ms"), 2),
                    "(baseline)" if r is pal else ratio(pal and lat(pal, "p99_ms"), lat(r, "p99_ms"), higher_is_better=False)])
    body += table(["server", "connections", "published/s", "deliveries/s", "delivered", "p50 ms", "p99 ms", "p999 ms",
                   "peer p99 ÷ palaver p99"], out)
    return body + "\n" + command_block(doc)


def section_storm(doc):
    body = (
        "### Reconnect storm\n\n"
        "Clients of one room disconnect; a backlog is posted while they are away; then all of them "
        "reconnect at once and resume from their cursors. Replayed messages per second over the "
        "time until the last client received `live` (target: ≥ 100,000 per second per node). "
        "No peer has a per-user log to resume from, so this one is palaver alone.\n\n"
    )
    out = []
    for r in doc["rows"]:
        out.append([r["target"], r["nodes"], r["clients"], r["backlog"], num(r["replayed"]), f"{r['all_live_s']:.2f}",
                    num(r["replayed_per_s"]), num(r["replayed_per_s_per_node"]), r["live_p50_ms"], r["live_p99_ms"], r["failed"]])
    body += table(["server", "nodes", "clients", "backlog each", "replayed", "all live after (s)", "replayed/s",
                   "per node", "live p50 ms", "live p99 ms", "failed"], out)
    return body + "\n" + command_block(doc)


def section_presence(doc):
    body = (
        "### Presence: inter-node messages and memory per online user\n\n"
        "Two nodes; every user connects (authenticated) to node A, so node B holds none of their "
        "connections, only their replicated presence records. Memory per online user is node B's "
        "resident memory growth (`VmRSS`) from before the users connected to when B's "
        "`palaver_presence_users` gauge counted all of them, divided by the users; node A's growth per "
        "connection (the connection itself included) is beside it. Then, for the measured period, each user "
        "changes state once a minute (`set_presence`, online ↔ away with a status text, the changes spread "
        "evenly over the users): inter-node presence messages per second are the growth of "
        "`palaver_presence_batches_sent_total` summed over the nodes, beside the naive count of one message "
        "per change per other node. Accounts are made beforehand and the nodes restarted, so neither "
        "ran argon2. Watchers on node B watch users of node A (sharing a room with them) and time each "
        "change until its `presence` push arrives (the status text carries the send time).\n\n"
    )
    out = []
    for r in doc["rows"]:
        mib = lambda k: num(r.get(k, 0) / 1024)
        out.append([
            r.get("nodes"), r.get("users"), r.get("failed"),
            f"{mib('rss_b_before_kib')} → {mib('rss_b_after_kib')}", num(r.get("b_bytes_per_user"), 0),
            num(r.get("b_bytes_per_user_with_status"), 0),
            f"{mib('rss_a_before_kib')} → {mib('rss_a_after_kib')}", num(r.get("a_kib_per_connection"), 2),
        ])
    body += table(["nodes", "users on A", "failed", "node B RSS (MiB)", "bytes per online user on B",
                   "… after each set a status", "node A RSS (MiB)", "KiB per connection on A"], out)
    out = []
    for r in doc["rows"]:
        ratio_text = "–" if not r.get("naive_over_batches") else f"**{r['naive_over_batches']:.1f}× fewer**"
        out.append([
            f"{num(r.get('per_minute'), 0)}/min × {r.get('users')}", f"{r.get('duration_s', 0):.0f}",
            num(r.get("changes_per_s")), f"{r.get('changes_failed')}", num(r.get("batches_per_s"), 2),
            num(r.get("records_per_s")), num(r.get("naive_messages_per_s")), ratio_text,
            num(r.get("idle_batches_per_s"), 2),
        ])
    body += "\n" + table(["changes", "seconds", "changes/s", "refused", "inter-node messages/s",
                          "records/s", "naive messages/s", "vs naive", "messages/s idle"], out)
    watched = [r for r in doc["rows"] if r.get("watchers")]
    if watched:
        out = []
        for r in watched:
            pl = r.get("push_latency", {})
            out.append([r["watchers"], r["watch_each"], r.get("watched_hidden"), num(r.get("pushes_per_s"), 2),
                        f"{r.get('marked_pushes')} / {r.get('expected_pushes')}", num(pl.get("p50_ms"), 1),
                        num(pl.get("p99_ms"), 1), num(pl.get("max_ms"), 1)])
        body += "\n" + table(["watchers on B", "watching each", "hidden", "pushes/s received", "received / expected",
                              "change → push p50 ms", "p99 ms", "max ms"], out)
    return body + "\n" + command_block(doc)


def targets_section():
    """The targets, met or not, from whatever results exist."""
    rows = []
    idle = load("idle")
    if idle:
        pal = next((r for r in idle["rows"] if r["kind"] == "palaver"), None)
        if pal:
            v = pal["kib_per_connection"]
            rows.append(["≤ 12 KB resident per idle authenticated connection", f"{v:.2f} KiB ({v * 1.024:.1f} KB)",
                         "met" if v * 1.024 <= 12 else "not met"])
    for fan in filter(None, [load("fanout"), load("fanout-10k")]):
        ok = [r for r in fan["rows"] if "error" not in r and not r["offered_rate"]
              and ((fan.get("rounds") or 1) == 1 or r.get("median"))]
        pal = next((r for r in ok if r["kind"] == "palaver"), None)
        nats = next((r for r in ok if r["kind"] == "nats"), None)
        if pal and nats:
            saturated = any(r.get("loadgen_saturated") for r in (pal, nats))
            rows.append([f"fan-out deliveries/s ≥ NATS over WebSocket ({pal['receivers']} receivers, same run)",
                         f"{num(pal['deliveries_per_s'])} vs {num(nats['deliveries_per_s'])} ({pal['deliveries_per_s'] / nats['deliveries_per_s']:.3f}×)"
                         + ("; the load generator was saturated" if saturated else ""),
                         "not shown (load generator saturated)" if saturated
                         else "met" if pal["deliveries_per_s"] >= nats["deliveries_per_s"] else "not met"])
            ours, theirs = pal.get("server_cpu_us_per_delivery"), nats.get("server_cpu_us_per_delivery")
            if ours and theirs:
                rows.append([f"server CPU per delivery ≤ NATS's ({pal['receivers']} receivers, same run)",
                             f"{ours:.3f} µs vs {theirs:.3f} µs ({ours / theirs:.2f}×)",
                             "met" if ours <= theirs else "not met"])
    sat = load("saturation")
    if sat:
        pal = next((x for x in sat.get("summary", []) if x["kind"] == "palaver"), None)
        if pal:
            v = pal.get("p99_at_half_ms")
            measured = "–" if v is None else f"{v:.1f} ms"
            nats = next((x for x in sat.get("summary", []) if x["kind"] == "nats"), None)
            if v is not None and nats and nats.get("p99_at_half_ms") is not None:
                measured += f" (NATS {nats['p99_at_half_ms']:.1f} ms at its own half"
                half = next((r for r in sat["rows"] if r["kind"] == "palaver" and r.get("phase") == "half"), None)
                late = ((half or {}).get("publish_late") or {}).get("p99_ms")
                measured += f"; the load generator's publisher alone is {late:.1f} ms late at p99)" if late is not None else ")"
            theirs = (nats or {}).get("p99_at_half_ms")
            rows.append(["p99 publish→deliver at half the saturation rate ≤ NATS's at its own half (one node, same run)",
                         measured, "met" if v is not None and theirs is not None and v <= theirs else "not met"])
    fdb = load("fdb-fanout")
    if fdb:
        ok = [r for r in fdb["rows"] if "error" not in r and not r["offered_rate"]
              and ((fdb.get("rounds") or 1) == 1 or r.get("median"))]
        on_fdb = next((r for r in ok if "FoundationDB" in r["target"]), None)
        on_sqlite = next((r for r in ok if "FoundationDB" not in r["target"]), None)
        if on_fdb and on_sqlite:
            ours, theirs = on_fdb["published_per_s"], on_sqlite["published_per_s"]
            rows.append([f"one room's rate on FoundationDB ≥ on SQLite ({on_fdb['receivers']} receivers, same run)",
                         f"{num(ours)} vs {num(theirs)} messages/s ({ours / theirs:.2f}×)",
                         "met" if ours >= theirs else "not met"])
    per_entry = {}
    for k in (1, 3, 7):
        doc = load(f"cross-node-8-k{k}")
        phases = [p for p in map(cross8_phase, (doc or {}).get("rows", [])) if p and p[0]]
        if phases:
            per_entry[k] = max(sent / entries for entries, sent, _ in phases)
    if per_entry:
        rows.append(["deliveries sent between nodes per committed entry ≤ the nodes with a receiver connected "
                     "(8 nodes, receivers on K of the owner's 7 peers; the phase with the most)",
                     ", ".join(f"K = {k}: {v:.2f}" for k, v in per_entry.items()) + " (7 at every K when every "
                     "entry went to every node)",
                     "met" if all(v <= k for k, v in per_entry.items()) else "not met"])
    storm = load("reconnect-storm")
    if storm and storm["rows"]:
        v = storm["rows"][0]["replayed_per_s_per_node"]
        rows.append(["reconnect replay ≥ 100,000 messages/s per node", f"{num(v)}/s", "met" if v >= 100_000 else "not met"])
    if not rows:
        return ""
    return "### The targets\n\n" + table(["target", "measured", ""], rows) + \
        "\nThe section at the end says what stands between palaver and the targets it misses.\n"


def cross8_phase(row):
    """(entries the owner committed, deliveries it sent to other nodes, spared) in one phase of a
    cross-node-8 run, from the owner's counters the load generator read around it (`node_ms`)."""
    node = row.get("node_ms") or {}
    if node.get("entries") is None:
        return None
    return node["entries"], node.get("sent_to_nodes", 0), node.get("spared_nodes", 0)


def section_cross8():
    """Targeted delivery: eight nodes, the receivers on 1, 3 or 7 of the seven that do not own
    the room; deliveries/s and the owner's counters per committed entry in each phase, from
    cross-node-8-k*.json."""
    docs = [(k, load(f"cross-node-8-k{k}")) for k in (1, 3, 7)]
    docs = [(k, d) for k, d in docs if d]
    if not docs:
        return None
    out = []
    for k, doc in docs:
        for r in (r for r in doc["rows"] if "error" not in r):
            rate = "max (window %d)" % r.get("window", 0) if not r["offered_rate"] else f"{num(r['offered_rate'], 0)}/s"
            phase = cross8_phase(r)
            per_entry = lambda v: num(v / phase[0], 2) if phase and phase[0] else "–"
            out.append([k, rate, r["receivers"], num(r["published_per_s"]), num(r["deliveries_per_s"]),
                        num(lat(r, "p99_ms"), 2), num(r.get("server_cpu_us_per_delivery"), 3),
                        num(phase and phase[0], 0), per_entry(phase and phase[1]), per_entry(phase and phase[2])])
    body = ("### Cross-node fan-out on eight nodes: deliveries go where the receivers are\n\n"
            "palaver alone, eight nodes on one shared store, every node and the load generator pinned as in the "
            "tables above (the eight nodes share the servers' core). The room is on the publisher's node; its "
            "receivers are spread over the first K of the seven other nodes, and the load generator is given only "
            "those. The owner sends a committed entry only to nodes where a recipient is connected "
            "(ARCHITECTURE.md, \"Two-tier fan-out, targeted\"): the last three columns are the entries the owner "
            "committed in the phase and its `palaver_cluster_deliveries_sent_total` and "
            "`palaver_cluster_deliveries_spared_total` per entry, read on its admin port around the phase. Sent "
            "should be K and spared 7 − K; before targeted delivery every entry went to all seven.\n\n")
    body += table(["receiver nodes K", "offered", "receivers", "published/s", "deliveries/s", "p99 ms",
                   "server CPU µs/delivery", "entries committed", "sent to other nodes per entry",
                   "spared per entry"], out)
    return body + "\n" + command_block(docs[-1][1])


def section_fdb(fanout, many, storm):
    """palaver on FoundationDB beside palaver on SQLite: the fdb-* scenarios."""
    body = (
        "### palaver on FoundationDB beside palaver on SQLite\n\n"
        "The same node binary (built with `--features fdb`) on either store, measured one after the "
        "other in each scenario: SQLite in WAL mode with synchronous=FULL in the node's process, and "
        "FoundationDB 7.3 as one `fdbserver` process (`single ssd`, an optimised build) on the "
        "same core as the node. The node's CPU on FoundationDB includes `fdbserver`'s, as the "
        "SQLite node's includes SQLite's. A room's messages commit in batches on both stores (one "
        "transaction per batch on FoundationDB, within its size and time limits, docs/STORAGE.md). "
        "*Commit* is the node's own histogram of a batch's time in the store (`palaver_commit_seconds`, "
        "buckets 1-2-5 per decade, so its percentiles read \"at most\" the bucket's bound).\n\n"
    )
    if fanout:
        rows = [r for r in fanout["rows"] if "error" not in r]
        if (fanout.get("rounds") or 1) > 1:
            rows = [r for r in rows if r.get("median")]
        body += (f"Fan-out, one room of {fanout.get('n')} receivers, 100-byte messages; *msgs/s in* at `max` "
                 "is the busiest rate one room sustains.\n\n")
        out = []
        for rate in sorted({r["offered_rate"] for r in rows}, key=lambda v: (v == 0, v)):
            same = sorted((r for r in rows if r["offered_rate"] == rate), key=lambda r: "FoundationDB" in r["target"])
            base = next((r for r in same if "FoundationDB" not in r["target"]), None)
            for r in same:
                node = r.get("node_ms") or {}
                le = lambda k: "–" if node.get(k) is None else f"≤ {node.get(k):g}"
                out.append([
                    "max (window %d)" % r.get("window", 0) if not rate else f"{num(rate, 0)}/s",
                    r["target"], num(r["published_per_s"]), num(r["deliveries_per_s"]), f"{r['delivered_pct']:.1f} %",
                    num(lat(r, "p50_ms"), 2), num(lat(r, "p99_ms"), 2), num(node.get("commit_ms"), 2),
                    le("commit_p50_le_ms"), le("commit_p99_le_ms"), num(r.get("server_cpu_us_per_delivery"), 3),
                    num(r.get("server_cpu_us_per_message"), 1),
                    "(baseline)" if r is base else ratio(r["published_per_s"], base and base["published_per_s"]),
                ])
        body += table(["offered", "server", "msgs/s in", "deliveries/s", "delivered", "p50 ms", "p99 ms",
                       "commit mean ms", "commit p50 ms", "commit p99 ms", "server CPU µs/delivery", "µs/message",
                       "msgs/s in ÷ SQLite's"], out)
        body += "\n" + command_block(fanout)
    if many:
        body += (f"\nMany rooms: {many.get('rooms')} rooms of {many.get('size')} members, each member also in a "
                 f"direct conversation, {many.get('rate')} message(s) per second each.\n\n")
        rows = many["rows"]
        base = next((r for r in rows if "FoundationDB" not in r["target"]), None)
        out = [[r["target"], r["connections"], num(r["published_per_s"]), num(r["deliveries_per_s"]),
                f"{r['delivered_pct']:.1f} %", num(lat(r, "p50_ms"), 2), num(lat(r, "p99_ms"), 2), num(lat(r, "p999_ms"), 2),
                "(baseline)" if r is base else ratio(lat(r, "p99_ms"), base and lat(base, "p99_ms"))]
               for r in rows]
        body += table(["server", "connections", "published/s", "deliveries/s", "delivered", "p50 ms", "p99 ms",
                       "p999 ms", "p99 ÷ SQLite's"], out)
        body += "\n" + command_block(many)
    if storm:
        body += "\nReconnect storm: every client resumes from its cursor at once after a backlog.\n\n"
        rows = storm["rows"]
        base = next((r for r in rows if "FoundationDB" not in r["target"]), None)
        out = [[r["target"], r["clients"], r["backlog"], num(r["replayed"]), f"{r['all_live_s']:.2f}",
                num(r["replayed_per_s"]), r["live_p50_ms"], r["live_p99_ms"], r["failed"],
                "(baseline)" if r is base else ratio(r["replayed_per_s"], base and base["replayed_per_s"])]
               for r in rows]
        body += table(["server", "clients", "backlog each", "replayed", "all live after (s)", "replayed/s",
                       "live p50 ms", "live p99 ms", "failed", "replayed/s ÷ SQLite's"], out)
        body += "\n" + command_block(storm)
    return body


def main():
    parts = []
    loaded = []  # every result read, for the header's run times and machine
    pinned = False
    for name in ["idle", "fanout", "fanout-10k", "fanout-xmpp", "saturation", "many-rooms", "reconnect-storm", "cross-node", "presence"]:
        doc = load(name)
        if not doc:
            continue
        loaded.append((name, doc))
        pinned = pinned or any(r.get("loadgen_cpus") for r in doc.get("rows", []))
        if name == "idle":
            parts.append(section_idle(doc))
        elif name == "fanout":
            parts.append(section_fanout(doc, f"Fan-out: one room, {doc.get('n')} receivers",
                                        "One publisher posts 100-byte messages into one room (NATS: one subject); "
                                        "every receiver gets every message. At a fixed rate the latency is the point; at "
                                        "`max` the publisher sends as fast as its window allows (palaver: up to `window` "
                                        "unacknowledged sends; peers: up to `window` of its own copies not yet back), and "
                                        "deliveries per second are the point. palaver commits every message durably "
                                        "(SQLite WAL, synchronous=FULL) before the ack; a room of more than 100 members is "
                                        "a large room (ARCHITECTURE.md), whose messages are written once, to the room log, "
                                        "rather than once per member; no peer persists anything."))
        elif name == "fanout-10k":
            parts.append(section_fanout(doc, f"Fan-out: one room, {doc.get('n')} receivers",
                                        "The table above with ten times the receivers and a tenth of the fixed rate "
                                        "(the same deliveries per second); `max_room_members` is raised for it."))
        elif name == "fanout-xmpp":
            parts.append(section_fanout(doc, f"Fan-out against ejabberd: one room, {doc.get('n')} receivers",
                                        "ejabberd multi-user chat joins are slow (every join is broadcast to every "
                                        "occupant), so this table uses fewer receivers, palaver measured the same way."))
        elif name == "saturation":
            parts.append(section_saturation(doc))
        elif name == "many-rooms":
            parts.append(section_many(doc))
        elif name == "reconnect-storm":
            parts.append(section_storm(doc))
        elif name == "presence":
            parts.append(section_presence(doc))
        elif name == "cross-node":
            parts.append(section_fanout(doc, f"Cross-node fan-out: one room, {doc.get('n')} receivers on another node",
                                        "palaver alone, as a 2-node cluster on one shared store: the publisher on the "
                                        "first node, every receiver on the second. The room's owner decides the path, so "
                                        "each placement is measured: with the room on the publisher's node every entry "
                                        "crosses the link as a delivery (once per entry and node; the receivers' node "
                                        "fans out to its own connections), and nothing paces the owner but its own "
                                        "commits, so at `max` it commits more than the other node can fan out and the "
                                        "latency is the age of that backlog; with the room on the receivers' node every "
                                        "send crosses the other way and the publisher's window paces the fan-out. "
                                        "Compare with palaver's rows in the single-node fan-out table above: same room "
                                        "size, same rates.", ratios=False))
    cross8 = section_cross8()
    if cross8:
        parts.append(cross8)
        loaded.extend((f"cross-node-8-k{k}", d) for k in (1, 3, 7) if (d := load(f"cross-node-8-k{k}")))
    fdb_names = ["fdb-fanout", "fdb-many-rooms", "fdb-reconnect-storm"]
    fdb_docs = [load(name) for name in fdb_names]
    if any(fdb_docs):
        parts.append(section_fdb(*fdb_docs))
        loaded.extend((name, d) for name, d in zip(fdb_names, fdb_docs) if d)
    timed = sorted((d for _, d in loaded if d.get("finished_unix")), key=lambda d: d["finished_unix"])
    finished = [d["finished_unix"] for d in timed]
    machine = next((d["machine"] for d in reversed(timed) if d.get("machine")), None)  # the newest run's
    # The same kind of machine is not always the same processor: say which tables ran on which.
    describe = lambda m: f"{m.get('cores', '?')} cores ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB"
    by_machine = {}
    for name, d in loaded:
        if d.get("machine"):
            by_machine.setdefault(describe(d["machine"]), []).append(name)
    machines_note = ("" if len(by_machine) < 2 else
                     "\n  The tables were not all measured on one processor: " +
                     "; ".join(f"{', '.join(names)} on {desc}" for desc, names in by_machine.items()) +
                     ". Ratios within a table hold; compare absolute figures only within one processor.")
    if not {name for name, _ in loaded} & {"fanout", "fanout-10k", "fanout-xmpp", "saturation", "cross-node"}:
        parts.insert(0, "### Fan-out, saturation and cross-node\n\nNo figures: the earlier ones were taken by a "
                        "load generator that was itself the bottleneck and are withdrawn (bench/findings.md, "
                        "\"Fan-out figures withdrawn\"); `bench/run.sh` measures them again the way described "
                        "above.\n")
    parts.insert(0, targets_section())
    when = lambda t: time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t))
    runs = f"{when(min(finished))} to {when(max(finished))}" if finished else "–"
    placement = ("With two or more cores the server runs on core 0 and the load generator on core 1\n"
                 "  (`taskset`, bench/servers.sh); each fan-out row names the load generator's CPUs and says\n"
                 "  where they were shared." if pinned else
                 "These runs predate pinning: the load generator shared both cores with the server.\n"
                 "  `bench/run.sh` now runs the server on core 0 and the load generator on core 1.")
    m = machine or {}
    header = f"""# Benchmarks

palaver beside the servers people pick today, on one machine, by one load generator
(`bench/src/bin/loadgen.rs`) that speaks each server's own protocol over WebSocket. Every
table comes from one run in which palaver and its peers were measured one after another
with the same procedure, so the **ratios** are the figures to read; absolute numbers move with
the machine's other load.

Regenerate everything (install peers, build, run every scenario, rewrite this file):

```
bench/run.sh            # about 25 minutes; QUICK=1 bench/run.sh for a small version
```

- Machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB, Linux {m.get('kernel', '?')};
  load average when the newest run started: {m.get('loadavg_at_start', '?')} (each fan-out row's last column
  says whether anything else took the CPUs while it ran).{machines_note}
  {placement}
- Servers: palaver (release build, SQLite store, WAL, synchronous=FULL, JSON frames batched per
  WebSocket message as the load generator asks with `hello.batch`; `--no-batch` for one frame per message), NATS
  server {os.environ.get('NATS_VERSION', '2.9')} (WebSocket listener, no TLS, no compression),
  python-socketio {os.environ.get('SOCKETIO_VERSION', '5')} on aiohttp (`bench/socketio_server.py`), ejabberd
  {os.environ.get('EJABBERD_VERSION', '23.01')} (`bench/ejabberd.yml`: anonymous SASL, no shapers, MUC
  without history or archive).
- Latency is publish→deliver: the body carries its send time; in the fan-out scenarios one
  receiver in 50 (`--latency-every`) records the difference in an HDR histogram (3 significant
  digits), the others only count what arrives (a substring search for the marker, no decoding)
  and check that send times strictly increase (nothing reordered or doubled); percentiles over
  every sampled delivery of every message sent in the measured window. Many-rooms samples every
  receiver.
- Deliveries/s count every receiver's deliveries of messages sent in the measured window.
- Server CPU (fan-out, saturation, cross-node): utime + stime of the server's processes from
  `/proc/PID/stat`, read when publishing starts and after the last delivery, so the set-up of
  accounts and joins is outside; divided by the deliveries the receivers counted (one per
  receiver per message; both palaver and NATS also send the publisher its own copy, not counted)
  and by the messages published, warm-up included as its CPU is. *Server % of a core* and
  *loadgen % CPU* are shares over the publishing period (100 % = one core); a load generator
  above 90 % of the CPUs it may use is marked **saturated**: that row may show its limit, not
  the server's. *Their CPUs busy in all* is how busy the server's and the load generator's
  CPUs were over the same period, every process counted (`/proc/stat`): well above their own
  shares, other work on the machine took those CPUs and the row is not a clean measurement.
- Runs finished {runs}; rendered {when(time.time())} by `bench/report.py` from `bench/results/*.json`.

"""
    findings = os.path.join(ROOT, "bench", "findings.md")
    if os.path.exists(findings):
        with open(findings) as f:
            parts.append(f.read())
    with open(OUTPUT, "w") as f:
        f.write(header + "\n".join(parts))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
