"""Sample ETL functions called by cauce's `python` tasks (standard library only)."""
import csv
import json
import os
from collections import defaultdict


def _data_dir():
    path = os.environ["CAUCE_DATA_DIR"]
    os.makedirs(path, exist_ok=True)
    return path


def extract(source, region="all", min_amount="0"):
    """Reads the CSV export, drops bad rows, keeps one region, writes JSON lines."""
    kept = rejected = 0
    out_path = os.path.join(_data_dir(), "sales.jsonl")
    with open(source, newline="", encoding="utf-8") as f, open(out_path, "w") as out:
        for row in csv.DictReader(f):
            try:
                amount = float(row["amount"])
            except (KeyError, ValueError):
                rejected += 1
                continue
            if region != "all" and row["region"] != region:
                continue
            if amount < float(min_amount):
                continue
            row["amount"] = amount
            out.write(json.dumps(row) + "\n")
            kept += 1
    print(f"extracted {kept} rows, rejected {rejected}")
    return {"status": "success", "rows": kept, "rejected": rejected}


def summarize(day):
    """Totals per region from the extracted rows; writes summary.csv."""
    totals = defaultdict(float)
    counts = defaultdict(int)
    with open(os.path.join(_data_dir(), "sales.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            totals[row["region"]] += row["amount"]
            counts[row["region"]] += 1
    with open(os.path.join(_data_dir(), "summary.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["day", "region", "orders", "total"])
        for region in sorted(totals):
            w.writerow([day, region, counts[region], f"{totals[region]:.2f}"])
    return {"status": "success", "regions": len(totals), "total": round(sum(totals.values()), 2)}
