#!/usr/bin/env python3
"""Generates the data-plane benchmark inputs, seeded, so every run measures the same bytes.

  OUT/sales.csv      ROWS rows: order_id, created_at, customer_email, sku, quantity, price,
                     country, status (about 8% cancelled), over 90 days of 2024
  OUT/products.csv   20,000 products: sku, name, category, cost
  OUT/customers.csv  100,000 customers: customer_email, name, segment, signup_date

Usage: data_gen.py OUT_DIR [ROWS]   (ROWS defaults to 5,000,000; files already there with
the same row count are kept)
"""

import os
import random
import sys

SEED = 20241201
COUNTRIES = ["ES", "AR", "MX", "CL", "CO", "PE", "UY", "FR", "PT", "IT"]
STATUSES = ["paid"] * 10 + ["shipped"] * 10 + ["cancelled"] * 2 + ["refunded"]
CATEGORIES = ["yerba", "termos", "mates", "alfajores", "bombillas", "libros"]
SEGMENTS = ["retail", "wholesale", "online"]
N_PRODUCTS = 20_000
N_CUSTOMERS = 100_000


def write_if_missing(path, rows, make):
    marker = path + ".rows"
    if os.path.exists(path) and os.path.exists(marker) and open(marker).read() == str(rows):
        return
    with open(path, "w", buffering=1 << 20) as f:
        make(f)
    with open(marker, "w") as m:
        m.write(str(rows))


def sales(f, rows):
    rnd = random.Random(SEED)
    f.write("order_id,created_at,customer_email,sku,quantity,price,country,status\n")
    chunk = []
    for i in range(1, rows + 1):
        day = rnd.randrange(90)
        month, dom = (1, day + 1) if day < 31 else ((2, day - 30) if day < 60 else (3, day - 59))
        secs = rnd.randrange(86400)
        ts = f"2024-{month:02d}-{dom:02d} {secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        cust = rnd.randrange(N_CUSTOMERS)
        sku = rnd.randrange(N_PRODUCTS)
        cents = rnd.randrange(100, 50000)
        chunk.append(
            f"{i},{ts},user{cust}@example.com,SKU{sku:05d},{rnd.randrange(1, 10)},"
            f"{cents // 100}.{cents % 100:02d},{rnd.choice(COUNTRIES)},{rnd.choice(STATUSES)}\n"
        )
        if len(chunk) == 10_000:
            f.write("".join(chunk))
            chunk.clear()
    f.write("".join(chunk))


def products(f):
    rnd = random.Random(SEED + 1)
    f.write("sku,name,category,cost\n")
    for i in range(N_PRODUCTS):
        cents = rnd.randrange(50, 30000)
        f.write(f"SKU{i:05d},Producto {i},{rnd.choice(CATEGORIES)},{cents // 100}.{cents % 100:02d}\n")


def customers(f):
    rnd = random.Random(SEED + 2)
    f.write("customer_email,name,segment,signup_date\n")
    for i in range(N_CUSTOMERS):
        f.write(
            f"user{i}@example.com,Cliente {i},{rnd.choice(SEGMENTS)},"
            f"20{rnd.randrange(15, 24)}-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}\n"
        )


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000_000
    os.makedirs(out, exist_ok=True)
    write_if_missing(os.path.join(out, "sales.csv"), rows, lambda f: sales(f, rows))
    write_if_missing(os.path.join(out, "products.csv"), N_PRODUCTS, products)
    write_if_missing(os.path.join(out, "customers.csv"), N_CUSTOMERS, customers)


if __name__ == "__main__":
    main()
