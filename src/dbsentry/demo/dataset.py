"""The demo's shop: customers with personal data, products and orders, generated deterministically.

Customers come from a seeded ``random.Random`` (so the same run gives the same people on
every machine) and are sent with COPY; orders are generated inside PostgreSQL with
``generate_series`` and arithmetic.  Every identifier is well-formed: SSNs avoid the
invalid areas (000, 666, 900-999) and groups/serials of zeros, card numbers pass the Luhn
check with real issuer prefixes, IBANs have the right length and mod-97 check digits.
Phone numbers use the ranges set aside for fiction and e-mail addresses the reserved
``example`` domains.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "DATASET_VERSION",
    "Customer",
    "Shop",
    "customers",
    "iban",
    "load_shop",
    "luhn_check_digit",
    "shop_is_loaded",
]

DATASET_VERSION = 1
SEED = 20_240_601

FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Ava", "Elijah", "Sophia", "Lucas",
    "Isabella", "Mateo", "Mia", "Levi", "Charlotte", "Ethan", "Harper", "James", "Evelyn",
    "Leo", "Luna", "Henry", "Chloe", "Jack", "Grace", "Aria", "Samuel", "Zoe", "Daniel",
    "Nora", "Hannah", "Jonas", "Lena", "Felix", "Marie", "Paul", "Camille", "Louis", "Chloé",
    "Hugo", "Inès", "Lucía", "Martín", "Sofía", "Pablo", "Daan", "Sanne", "Thijs", "Femke",
    "Amira", "Omar", "Priya", "Arjun", "Mei", "Wei", "Yuki", "Kenji", "Fatima", "Tomás",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martinez",
    "Lopez", "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee",
    "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King",
    "Wright", "Evans", "Roberts", "Müller", "Schmidt", "Schneider", "Fischer", "Weber",
    "Dubois", "Moreau", "Laurent", "Lefèvre", "Fernández", "González", "Rodríguez", "Sánchez",
    "de Vries", "Jansen", "van den Berg", "Bakker", "Visser", "Patel", "Nguyen", "Kim",
    "O'Brien", "Murphy", "Kowalski", "Novak", "Rossi", "Silva", "Haddad", "Tanaka", "Cohen",
)  # fmt: skip
STREETS = (
    "Maple", "Oak", "Cedar", "Elm", "Pine", "Lake", "Hill", "Park", "Main", "Church",
    "Mill", "River", "Station", "Victoria", "King", "Queen", "Garden", "Market", "Bridge",
)  # fmt: skip

# country: (share in percent, cities, street suffixes)
_COUNTRIES: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    "US": (45, ("New York", "Chicago", "Austin", "Seattle", "Denver", "Boston", "Atlanta"), ("St", "Ave", "Rd", "Blvd")),
    "GB": (15, ("London", "Manchester", "Leeds", "Bristol", "Glasgow"), ("Street", "Road", "Lane")),
    "DE": (15, ("Berlin", "Hamburg", "München", "Köln", "Leipzig"), ("straße", "weg", "allee")),
    "FR": (10, ("Paris", "Lyon", "Marseille", "Toulouse", "Nantes"), ("rue", "avenue", "boulevard")),
    "NL": (8, ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven"), ("straat", "laan", "gracht")),
    "ES": (7, ("Madrid", "Barcelona", "Valencia", "Sevilla"), ("Calle", "Avenida", "Paseo")),
}  # fmt: skip
_COUNTRY_WHEEL = [country for country, spec in _COUNTRIES.items() for _ in range(spec[0])]
_FIRST_COUNTRIES = ("US", "GB", "DE", "FR", "NL", "ES")
_US_AREA_CODES = (212, 312, 415, 512, 206, 303, 617, 404, 646, 718, 213, 305)
_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com")
_NOTES = (
    "", "", "", "", "prefers contact by e-mail", "VIP customer", "asked for paper invoices",
    "account migrated from the old shop", "do not call before 10am", "loyalty programme member",
    "gift orders only", "requested a refund in 2023", "wholesale account",
)  # fmt: skip

# Published sample SSNs that must never appear as real-looking values.
_SAMPLE_SSNS = {"078-05-1120", "219-09-9999", "457-55-5462"}


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these sit at odd positions once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    """An IBAN (compact form) for ``bban`` with its ISO 7064 mod 97-10 check digits."""
    rearranged = bban + country + "00"
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    check = 98 - int(digits) % 97
    return f"{country}{check:02d}{bban}"


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randrange(1, 900)
        if area == 666:
            continue
        value = f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10_000):04d}"
        if value not in _SAMPLE_SSNS:
            return value


def _card(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind < 5:  # Visa
        prefix, length = "4", 16
    elif kind < 8:  # Mastercard, 51-55 and the 2-series
        prefix = str(rng.randrange(51, 56)) if kind < 7 else str(rng.randrange(2221, 2721))
        length = 16
    else:  # American Express
        prefix, length = rng.choice(("34", "37")), 15
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    return body + luhn_check_digit(body)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _letters(rng: random.Random, n: int) -> str:
    return "".join(chr(65 + rng.randrange(26)) for _ in range(n))


def _iban(rng: random.Random, country: str) -> str | None:
    if country == "GB":
        return iban("GB", _letters(rng, 4) + _digits(rng, 14))
    if country == "DE":
        return iban("DE", _digits(rng, 18))
    if country == "FR":
        return iban("FR", _digits(rng, 23))
    if country == "NL":
        return iban("NL", _letters(rng, 4) + _digits(rng, 10))
    if country == "ES":
        return iban("ES", _digits(rng, 20))
    return None


def _phone(rng: random.Random, country: str) -> str:
    if country == "US":
        return f"({rng.choice(_US_AREA_CODES)}) 555-01{rng.randrange(100):02d}"
    if country == "GB":
        return f"+44 20 7946 0{rng.randrange(1000):03d}"
    if country == "DE":
        return f"+49 30 {rng.randrange(10_000_000, 100_000_000)}"
    if country == "FR":
        return f"+33 1 {rng.randrange(10, 100)} {rng.randrange(10, 100)} {rng.randrange(10, 100)} {rng.randrange(10, 100)}"
    if country == "NL":
        return f"+31 20 {rng.randrange(1_000_000, 10_000_000)}"
    return f"+34 91 {rng.randrange(1_000_000, 10_000_000)}"


def _address(rng: random.Random, country: str) -> str:
    street = rng.choice(STREETS)
    suffix = rng.choice(_COUNTRIES[country][2])
    number = rng.randrange(1, 400)
    if country == "US" or country == "GB":
        return f"{number} {street} {suffix}"
    if country in ("DE", "NL"):
        return f"{street}{suffix} {number}"
    return f"{number} {suffix} {street}" if country == "FR" else f"{suffix} {street}, {number}"


def _ascii(text: str) -> str:
    table = str.maketrans("àáâäçéèêëíïñóöúüß'", "aaaaceeeeiinoouus-")
    return "".join(ch for ch in text.lower().translate(table) if ch.isalnum() or ch in "-.")


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    full_name: str
    email: str
    phone: str
    date_of_birth: dt.date
    ssn: str
    card_number: str
    iban: str | None
    address: str
    city: str
    country: str
    created_at: dt.datetime
    notes: str | None

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.full_name, self.email, self.phone, self.date_of_birth, self.ssn,
            self.card_number, self.iban, self.address, self.city, self.country, self.created_at,
            self.notes,
        )  # fmt: skip


_EPOCH = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
_SPAN_SECONDS = 6 * 365 * 86_400


def customers(count: int, seed: int = SEED) -> Iterator[Customer]:
    """``count`` customers, the same ones for the same seed."""
    rng = random.Random(seed)
    born_first = dt.date(1940, 1, 1).toordinal()
    born_last = dt.date(2006, 12, 31).toordinal()
    for i in range(1, count + 1):
        # The first rows show one customer of each country (and so every kind of identifier).
        country = (
            _FIRST_COUNTRIES[i - 1] if i <= len(_FIRST_COUNTRIES) else rng.choice(_COUNTRY_WHEEL)
        )
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        created = _EPOCH + dt.timedelta(seconds=rng.randrange(_SPAN_SECONDS))
        yield Customer(
            id=i,
            full_name=f"{first} {last}",
            email=f"{_ascii(first)}.{_ascii(last.replace(' ', ''))}{i}@{rng.choice(_DOMAINS)}",
            phone=_phone(rng, country),
            date_of_birth=dt.date.fromordinal(rng.randrange(born_first, born_last + 1)),
            ssn=_ssn(rng),
            card_number=_card(rng),
            iban=_iban(rng, country),
            address=_address(rng, country),
            city=rng.choice(_COUNTRIES[country][1]),
            country=country,
            created_at=created,
            notes=rng.choice(_NOTES) or None,
        )


_SCHEMA = """
CREATE TABLE products (
    id          integer PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    category    text NOT NULL,
    price       numeric(10, 2) NOT NULL
);
CREATE TABLE customers (
    id             bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    full_name      text NOT NULL,
    email          text NOT NULL UNIQUE,
    phone          text,
    date_of_birth  date,
    ssn            text,
    card_number    text,
    iban           text,
    address        text,
    city           text,
    country        char(2) NOT NULL,
    created_at     timestamptz NOT NULL,
    notes          text
);
CREATE TABLE orders (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL,
    product_id   integer NOT NULL,
    quantity     integer NOT NULL,
    amount       numeric(12, 2) NOT NULL,
    status       text NOT NULL,
    created_at   timestamptz NOT NULL,
    ip_address   inet
);
"""

_PRODUCTS = """
INSERT INTO products (id, sku, name, category, price)
SELECT g,
       format('SKU-%s', lpad(g::text, 5, '0')),
       (ARRAY['Classic', 'Pro', 'Mini', 'Ultra', 'Eco', 'Smart', 'Travel', 'Studio'])[1 + (g * 7) % 8]
         || ' ' ||
       (ARRAY['Kettle', 'Backpack', 'Headphones', 'Lamp', 'Desk', 'Chair', 'Mug', 'Notebook',
              'Blender', 'Jacket'])[1 + (g * 11) % 10],
       (ARRAY['kitchen', 'outdoor', 'audio', 'home', 'office', 'apparel'])[1 + (g * 5) % 6],
       round((5 + (g * 7919) % 49500 / 100.0)::numeric, 2)
FROM generate_series(1, {products}) AS g
"""

# Pseudo-random but deterministic: multiplications by primes modulo the ranges.
_ORDERS = """
INSERT INTO orders (id, customer_id, product_id, quantity, amount, status, created_at, ip_address)
SELECT g,
       1 + (g * 7919 + g / 3) % {customers},
       p.id,
       1 + (g * 31) % 7 / 3,
       p.price * (1 + (g * 31) % 7 / 3),
       (ARRAY['delivered', 'delivered', 'delivered', 'shipped', 'paid', 'pending',
              'refunded', 'cancelled'])[1 + (g * 13) % 8],
       timestamptz '2020-01-01 00:00:00+00' + ((g * 104729) % 189216000) * interval '1 second',
       format('%s.%s.%s.%s', 11 + (g * 17) % 212, (g * 29) % 256, (g * 37) % 256, 1 + (g * 41) % 254)::inet
FROM generate_series(1::bigint, {orders}) AS g
JOIN products AS p ON p.id = 1 + (g * 7907) % {products}
"""

_FINISH = """
SELECT setval(pg_get_serial_sequence('customers', 'id'), (SELECT max(id) FROM customers));
SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders));
ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE orders ADD FOREIGN KEY (product_id) REFERENCES products (id);
CREATE INDEX orders_customer_id ON orders (customer_id);
CREATE INDEX orders_created_at ON orders (created_at);
CREATE VIEW customer_contacts AS SELECT full_name, email, phone FROM customers;
CREATE FUNCTION customer_email(customer_id bigint) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT email FROM customers WHERE id = customer_id $$;
COMMENT ON TABLE customers IS 'Shop customers (generated demo data: every person is fictional)';
COMMENT ON COLUMN customers.ssn IS 'US social security number';
ANALYZE;
"""


@dataclass(frozen=True, slots=True)
class Shop:
    """How big a generated shop is."""

    customers: int
    orders: int
    products: int = 200

    @property
    def marker(self) -> str:
        return (
            f"dbsentry demo dataset v{DATASET_VERSION}: {self.customers} customers, "
            f"{self.orders} orders, {self.products} products"
        )


def shop_is_loaded(admin: psycopg.Connection[Any], dbname: str, shop: Shop) -> bool:
    """True if ``dbname`` holds a completely loaded ``shop`` (its marker is set last)."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (dbname,),
    ).fetchone()
    return row is not None and row[0] == shop.marker


def load_shop(
    admin: psycopg.Connection[Any], connect_db: Any, dbname: str, owner: str, shop: Shop
) -> None:
    """(Re)create database ``dbname`` owned by ``owner`` and fill it.

    ``admin`` is an autocommit superuser connection; ``connect_db(dbname)`` opens a
    connection to the new database as ``owner``.
    """
    ident = sql.Identifier(dbname)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    admin.execute(
        sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
            ident, sql.Identifier(owner)
        )
    )
    sizes = {"customers": shop.customers, "orders": shop.orders, "products": shop.products}
    with connect_db(dbname) as conn:
        conn.execute(_SCHEMA)
        conn.execute(_PRODUCTS.format(**sizes))
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY customers (id, full_name, email, phone, date_of_birth, ssn, card_number, iban,"
                " address, city, country, created_at, notes) FROM STDIN"
            ) as copy,
        ):
            for c in customers(shop.customers):
                copy.write_row(c.row())
        conn.execute(_ORDERS.format(**sizes))
        conn.execute(_FINISH)
        conn.commit()
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(shop.marker)))
