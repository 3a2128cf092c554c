"""Turns bench/durable.sh's raw results into bench/report/durable.{json,md} and prints the tables.

Messages per broker CPU-second are compared (crash/off, ringmq crash/Mosquitto): the machine is
shared and noisy, and an interleaved run gives every broker the same noise. A figure a broker
does not give (the store's metrics before the store exists, a run that failed, bytes per message
of a data dir nothing was written to) is None in the JSON and "n/a" in the tables. Losses are
judged against the messages a fill had acknowledged, and only when nothing in it failed (a
session not set up, a publisher that failed): otherwise "fill incomplete". Exits 1 when ringmq
lost an acknowledged message: in any part while online, and across kill -9 once it knows
[durability]; when one of its fills was incomplete; or when a part gave no result."""
import json
import pathlib
import statistics
import sys

work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mode, durability, reps = sys.argv[3], sys.argv[4], int(sys.argv[5])
queue_sessions, queue_msgs, rec_sessions, rec_msgs = map(int, sys.argv[6:10])
missing = []


def load(name):
    """A loadgen JSON result, or None when its run gave none: noted, with the end of what it
    said on stderr (the work dir goes when the script ends)."""
    try:
        return json.loads((work / name).read_text())
    except (OSError, ValueError):
        try:
            said = (work / name).with_suffix(".err").read_text().strip().splitlines()[-3:]
        except OSError:
            said = []
        missing.append(" / ".join([name] + said))
        return None


def prom(name):
    """The unlabelled samples of a Prometheus text file (empty when the broker has none)."""
    found = {}
    try:
        text = (work / name).read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            try:
                found[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return found


def number(name):
    try:
        return float((work / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ratio(a, b):
    return a / b if a is not None and b else None


def median(values):
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def fill_complete(fill):
    """Whether a loadgen queue run filled with nothing failed: its acknowledged messages are then
    what a drain owes."""
    return fill["fill_failed"] == 0


def pairs():
    rows = {r["broker"]: r for r in (load("pairs.json") or [])}
    got = {
        name: {k: rows[name][k] for k in ["rate", "efficiency", "p99_us", "lost", "duplicated"]}
        for name in ["off", "crash", "mosquitto"] if name in rows
    }
    eff = lambda n: got.get(n, {}).get("efficiency")
    return {
        "brokers": got,
        "crash_over_off": ratio(eff("crash"), eff("off")),
        "crash_over_mosquitto": ratio(eff("crash"), eff("mosquitto")),
    }


def queue(name):
    """The REPS runs against one broker: rates as medians, counts summed; lost is None when a
    run's fill was incomplete."""
    runs = [r for r in (load(f"queue-{name}-{k}.json") for k in range(1, reps + 1)) if r]
    if not runs:
        return None
    failures = {}
    for r in runs:
        for why, n in r["failures"].items():
            failures[why] = failures.get(why, 0) + n
    complete = all(fill_complete(r) for r in runs)
    return {
        "runs": len(runs),
        **{k: median(r[k] for r in runs)
           for k in ["fill_rate", "fill_per_cpu_sec", "drain_rate", "drain_per_cpu_sec"]},
        **{k: sum(r[k] for r in runs) for k in ["acked", "drained", "duplicated", "stray"]},
        "fill_complete": complete,
        "lost": sum(r["lost"] for r in runs) if complete else None,
        "failures": failures,
    }


def restart(name):
    fill, drain = load(f"rec-{name}-fill.json"), load(f"rec-{name}-drain.json")
    before, after = prom(f"rec-{name}-before.prom"), prom(f"rec-{name}-after.prom")
    du = number(f"rec-{name}-du")
    acked = fill["acked"] if fill else None
    complete = fill is not None and fill_complete(fill)
    recovered = drain["drained"] if drain else None
    return {
        "acked": acked,
        "fill_rate": fill["fill_rate"] if fill else None,
        "fill_complete": complete,
        "data_dir_bytes": du,
        # A data dir nothing was written to (Mosquitto between autosaves) costs no bytes a
        # message: it keeps none.
        "bytes_per_message": ratio(du, acked) if du else None,
        "store_disk_bytes": before.get("ringmq_store_disk_bytes"),
        "launch_to_connack_secs": number(f"rec-{name}-up"),
        "restore_seconds": after.get("ringmq_store_restore_seconds"),
        "restored_sessions": after.get("ringmq_store_restored_sessions"),
        "restored_messages": after.get("ringmq_store_restored_messages"),
        "sessions_after": after.get("ringmq_sessions"),
        "resumed": drain["resumed"] if drain else None,
        "recovered": recovered,
        # Against what this fill had acknowledged, not the drain's --messages.
        "lost": max(acked - recovered, 0) if complete and recovered is not None else None,
        "duplicated": drain["duplicated"] if drain else None,
        "stray": drain["stray"] if drain else None,
    }


report = {
    "mode": mode,
    "durability": durability,
    "reps": reps,
    "pairs": pairs(),
    "queue": {"sessions": queue_sessions, "messages": queue_msgs,
              "brokers": {n: queue(n) for n in ["off", "crash", "mosquitto"]}},
    "restart": {"sessions": rec_sessions, "messages": rec_msgs,
                "brokers": {n: restart(n) for n in ["ringmq", "mosquitto"]}},
}
out.mkdir(parents=True, exist_ok=True)
(out / "durable.json").write_text(json.dumps(report, indent=2) + "\n")


def f(v, fmt="{:,.0f}"):
    return "n/a" if v is None else fmt.format(v)


def lost(r):
    """A broker's losses for the tables: "fill incomplete" when they were not judged."""
    return "fill incomplete" if r["acked"] is not None and not r["fill_complete"] else f(r["lost"])


names = {"off": "ringmq off", "crash": "ringmq crash", "mosquitto": "Mosquitto persistent",
         "ringmq": "ringmq crash"}
note = ("" if durability == "known" else
        " (ringmq does not know [durability] yet: its rows ran the broker as it is)")
p = report["pairs"]
lines = [
    "# Durable state: ringmq off / crash, Mosquitto persistence true", "",
    f"mode: {mode}; medians of {reps} interleaved runs{note}", "",
    "Mosquitto's autosave is left at its defaults (every 1,800 s, and at shutdown): it does no "
    "disk I/O inside these windows, so its figures carry no cost of persistence, and a kill -9 "
    "finds nothing on disk.", "",
    "## 20 QoS 1 pairs, persistent sessions, 16 in flight", "",
    "| broker | msg/s | msg per broker CPU-s | p99 ms | lost | duplicated |",
    "|---|---|---|---|---|---|",
]
for n, r in p["brokers"].items():
    lines.append(f"| {names[n]} | {f(r['rate'])} | {f(r['efficiency'])} | "
                 f"{r['p99_us'] / 1000:.2f} | {r['lost']} | {r['duplicated']} |")
lines += ["", f"crash/off: {f(p['crash_over_off'], '{:.2f}x')}; "
              f"ringmq crash/Mosquitto: {f(p['crash_over_mosquitto'], '{:.2f}x')} "
              "(messages per broker CPU-second)", "",
          f"## Offline queues: {queue_msgs:,} QoS 1 messages into {queue_sessions:,} sessions, "
          "then drained", "",
          f"Rates: medians of {reps} runs; counts: summed over them.", "",
          "| broker | fill msg/s | fill msg/CPU-s | drain msg/s | drain msg/CPU-s | acked | "
          "drained | lost of acked | duplicated | stray |",
          "|---|---|---|---|---|---|---|---|---|---|"]
for n, r in report["queue"]["brokers"].items():
    if r is None:
        lines.append(f"| {names[n]} |" + " n/a |" * 9)
        continue
    lines.append(f"| {names[n]} | {f(r['fill_rate'])} | {f(r['fill_per_cpu_sec'])} | "
                 f"{f(r['drain_rate'])} | {f(r['drain_per_cpu_sec'])} | {f(r['acked'])} | "
                 f"{f(r['drained'])} | {lost(r)} | {f(r['duplicated'])} | {f(r['stray'])} |")
lines += ["", f"## kill -9 with {rec_msgs:,} messages queued for {rec_sessions:,} sessions, "
              "restart on the same data dir", "",
          "| broker | acked | data dir B/msg | store disk bytes | launch to CONNACK s | "
          "restore s | restored sessions | restored messages | sessions resumed | "
          "messages recovered | lost of acked | stray |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for n, r in report["restart"]["brokers"].items():
    lines.append(
        f"| {names[n]} | {f(r['acked'])} | {f(r['bytes_per_message'], '{:.1f}')} | "
        f"{f(r['store_disk_bytes'])} | {f(r['launch_to_connack_secs'], '{:.2f}')} | "
        f"{f(r['restore_seconds'], '{:.3f}')} | {f(r['restored_sessions'])} | "
        f"{f(r['restored_messages'])} | {f(r['resumed'])} | {f(r['recovered'])} | "
        f"{lost(r)} | {f(r['stray'])} |")
(out / "durable.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

failed = [f"no result: {m}" for m in missing]
for n in ["off", "crash"]:
    r = p["brokers"].get(n)
    if r and r["lost"]:
        failed.append(f"pairs, ringmq {n}: lost {r['lost']}")
    q = report["queue"]["brokers"][n]
    if q and not q["fill_complete"]:
        failed.append(f"offline queue, ringmq {n}: fill incomplete, losses not judged "
                      f"({q['failures']})")
    elif q and q["lost"]:
        failed.append(f"offline queue, ringmq {n}: lost {q['lost']} of {q['acked']} acknowledged")
rec = report["restart"]["brokers"]["ringmq"]
if rec["acked"] is not None and not rec["fill_complete"]:
    failed.append("kill -9, ringmq crash: fill incomplete, losses not judged")
elif durability == "known" and rec["lost"]:
    failed.append(f"kill -9, ringmq crash: lost {rec['lost']} of {rec['acked']} acknowledged")
if failed:
    print("FAILED:\n  " + "\n  ".join(failed))
    sys.exit(1)
