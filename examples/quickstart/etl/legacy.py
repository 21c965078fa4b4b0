"""Functions in the style of the seed-001 orchestrator: keyword parameters in, a dict out."""
import csv
import json
import os


def _work(name):
    path = os.path.join(os.environ.get("CAUCE_DATA_DIR", "."), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def extract_contratos(source, limit=100):
    with open(source, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(limit), csv.DictReader(f))]
    with open(_work("contratos.json"), "w") as out:
        json.dump(rows, out)
    return {"status": "success", "message": f"{len(rows)} contracts", "rows": len(rows)}


def extract_presupuesto(year):
    budget = {"year": year, "total": 1_000_000}
    with open(_work("presupuesto.json"), "w") as out:
        json.dump(budget, out)
    return {"status": "success", "year": year}


def transform():
    with open(_work("contratos.json")) as f:
        rows = json.load(f)
    with open(_work("presupuesto.json")) as f:
        budget = json.load(f)
    clean = [r for r in rows if r.get("amount", "").replace(".", "", 1).isdigit()]
    for r in clean:
        r["share_of_budget"] = float(r["amount"]) / budget["total"]
    with open(_work("contratos_clean.json"), "w") as out:
        json.dump(clean, out)
    return {"status": "success", "rows_in": len(rows), "rows_out": len(clean)}


def load(target):
    with open(_work("contratos_clean.json")) as f:
        rows = json.load(f)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target, "w") as out:
        json.dump(rows, out, indent=1)
    return {"status": "success", "loaded": len(rows), "target": target}


def validate(min_rows):
    with open(_work("contratos_clean.json")) as f:
        rows = json.load(f)
    if len(rows) < min_rows:
        return {"status": "error", "message": f"only {len(rows)} rows, expected at least {min_rows}"}
    return {"status": "success", "rows": len(rows)}
