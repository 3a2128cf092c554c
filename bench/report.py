"""Turns bench/ci.sh's raw results into bench/report/latest.{json,md} and gates on the baseline.

Each scenario's gated figure is ringmq's ratio to Mosquitto (higher is better everywhere):
deliveries per broker CPU-second for message scenarios (throughput ratio when CPU is unknown),
connections made per broker CPU-second for the connect burst, and Mosquitto's RSS per idle
connection over ringmq's for the idle scenario. The latency scenario (Mosquitto's p99 over
ringmq's at a fixed rate) is reported, not gated: a p99 on a shared machine moves more than
the margin. The persistent QoS 1 scenario also runs ringmq with `[durability] mode = "off"`:
what the store costs, crash_over_off (ringmq's deliveries per CPU-second in its default mode
over mode off), is gated too. Where FlashMQ ran beside them, ringmq's figure over FlashMQ's is
reported for each scenario."""
import json
import pathlib
import re
import sys

SCENARIOS = ["pairs", "fanout", "qos1", "qos1_persistent", "latency", "connect", "idle"]
NOT_GATED = {"latency"}
work, out, mode, margin = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])


def figure(name, row):
    """The scenario's figure of merit for one broker (higher is better)."""
    if name == "connect":
        return row.get("connects_per_cpu_sec") or row["rate"]
    if name == "latency":
        return 1.0 / row["p99_us"] if row["p99_us"] else 0.0
    if name == "idle":
        return 1.0 / row["efficiency"] if row["efficiency"] else 0.0
    return row["efficiency"] or row["rate"]


def scenario(name):
    rows = {r["broker"]: r for r in json.loads((work / f"{name}.json").read_text())}
    r, m = rows["ringmq"], rows["mosquitto"]
    ratio = figure(name, r) / figure(name, m) if figure(name, m) else 0.0
    extra = {}
    if "ringmq_off" in rows:
        off = rows["ringmq_off"]
        extra = {"ringmq_off_efficiency": off["efficiency"],
                 "crash_over_off": (r["efficiency"] or 0) / off["efficiency"] if off["efficiency"] else 0.0}
    if "flashmq" in rows:
        f = rows["flashmq"]
        extra |= {"flashmq_rate": f["rate"], "flashmq_efficiency": f["efficiency"],
                  "flashmq_p99_us": f["p99_us"],
                  "over_flashmq": figure(name, r) / figure(name, f) if figure(name, f) else 0.0}
    if name == "connect":
        extra |= {"ringmq_connects_per_cpu_sec": r.get("connects_per_cpu_sec"),
                  "mosquitto_connects_per_cpu_sec": m.get("connects_per_cpu_sec")}
    return extra | {
        "ringmq_rate": r["rate"], "mosquitto_rate": m["rate"], "rate_ratio": r["rate_ratio"],
        "ringmq_efficiency": r["efficiency"], "mosquitto_efficiency": m["efficiency"],
        "ratio": ratio, "gated": name not in NOT_GATED,
        "ringmq_p99_us": r["p99_us"], "mosquitto_p99_us": m["p99_us"],
        "ringmq_lost": r["lost"], "ringmq_duplicated": r["duplicated"],
    }


def criterion():
    found = {}
    for f in work.glob("criterion-*.txt"):
        name = None
        for line in f.read_text().splitlines():
            head = re.match(r"^(\S+/\S+)", line)
            if head and "time:" not in line.split(head.group(1))[0]:
                name = head.group(1)
            t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
            if t and name:
                value, unit = float(t.group(1)), t.group(2)
                found[name] = value * {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}.get(unit, 1)
                name = None
    return found


report = {
    "mode": mode,
    "scenarios": {n: scenario(n) for n in SCENARIOS},
    "criterion_ns": criterion(),
}
out.mkdir(parents=True, exist_ok=True)
(out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")

lines = ["# ringmq vs Mosquitto (and FlashMQ where it ran)", "", f"mode: {mode}", "",
         "| scenario | ringmq | mosquitto | throughput ratio | ratio (gated unless noted) | over FlashMQ | "
         "ringmq p99 us | mosquitto p99 us | lost |",
         "|---|---|---|---|---|---|---|---|---|"]
for n, s in report["scenarios"].items():
    flash = f"{s['over_flashmq']:.2f}x" if "over_flashmq" in s else "-"
    gated = "" if s["gated"] else " (not gated)"
    lines.append(f"| {n} | {s['ringmq_rate']:.0f} | {s['mosquitto_rate']:.0f} | {s['rate_ratio']:.2f}x | "
                 f"{s['ratio']:.2f}x{gated} | {flash} | {s['ringmq_p99_us']} | {s['mosquitto_p99_us']} | "
                 f"{s['ringmq_lost']} |")
if "crash_over_off" in report["scenarios"]["qos1_persistent"]:
    lines.append(f"| qos1_persistent: crash over off | | | | "
                 f"{report['scenarios']['qos1_persistent']['crash_over_off']:.2f}x | | |")
lines += ["", "| criterion bench | ns |", "|---|---|"]
lines += [f"| {k} | {v:.1f} |" for k, v in sorted(report["criterion_ns"].items())]
(out / "latest.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

missing = [n for n in SCENARIOS if n not in report["scenarios"]]
assert not missing, f"scenarios missing from the report: {missing}"
assert report["criterion_ns"], "no criterion result parsed"
if mode != "full":
    sys.exit(0)
base_path = pathlib.Path("bench/baseline.json")
if not base_path.exists():
    print("no bench/baseline.json: nothing to compare with")
    sys.exit(0)
base = json.loads(base_path.read_text())["scenarios"]
failed = []
for n, s in report["scenarios"].items():
    b = base.get(n)
    if b and s["gated"] and s["ratio"] < b["ratio"] * (1 - margin):
        failed.append(f"{n}: {s['ratio']:.2f}x vs baseline {b['ratio']:.2f}x (margin {margin:.0%})")
    if b and "crash_over_off" in b and s.get("crash_over_off", 0) < b["crash_over_off"] * (1 - margin):
        failed.append(f"{n} crash over off: {s.get('crash_over_off', 0):.2f}x vs baseline "
                      f"{b['crash_over_off']:.2f}x (margin {margin:.0%})")
if failed:
    print("REGRESSION:\n  " + "\n  ".join(failed))
    sys.exit(1)
print(f"no ratio fell more than {margin:.0%} below the baseline")
