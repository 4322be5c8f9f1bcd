"""The data classes dbsentry masks, and how a column or value came to be classified."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class DataClass(StrEnum):
    """A kind of sensitive data.  The value is the name used in policies and comments."""

    EMAIL = "email"
    PHONE = "phone"
    PERSON_NAME = "person_name"
    POSTAL_ADDRESS = "postal_address"
    DATE_OF_BIRTH = "date_of_birth"
    NATIONAL_ID = "national_id"
    PAYMENT_CARD = "payment_card"
    IBAN = "iban"
    IP_ADDRESS = "ip_address"
    SECRET = "secret"


#: How bad a leak is; when a value derives from several classes the highest wins.
SENSITIVITY: dict[DataClass, int] = {
    DataClass.SECRET: 100,
    DataClass.PAYMENT_CARD: 90,
    DataClass.NATIONAL_ID: 90,
    DataClass.IBAN: 80,
    DataClass.DATE_OF_BIRTH: 60,
    DataClass.EMAIL: 50,
    DataClass.PHONE: 50,
    DataClass.PERSON_NAME: 40,
    DataClass.POSTAL_ADDRESS: 40,
    DataClass.IP_ADDRESS: 30,
}

# The order ties break in, so that the choice never depends on set iteration order.
_ORDER = {c: i for i, c in enumerate(DataClass)}

Source = Literal["schema-name", "schema-type", "schema-comment", "value", "policy", "copy"]


@dataclass(frozen=True, slots=True)
class Classification:
    """A data class and why: ``source`` says which evidence decided, ``evidence`` quotes it."""

    data_class: DataClass
    source: Source
    evidence: str


def most_sensitive(
    classes: frozenset[DataClass] | set[DataClass] | list[DataClass],
) -> DataClass | None:
    """The class to mask with when a value derives from several."""
    best: DataClass | None = None
    for c in classes:
        if best is None or (SENSITIVITY[c], -_ORDER[c]) > (SENSITIVITY[best], -_ORDER[best]):
            best = c
    return best


def parse_class(name: str) -> DataClass | None:
    """``"email"``, ``"EMAIL"``, ``"payment-card"`` -> the class; None when unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    try:
        return DataClass(key)
    except ValueError:
        return None


_ALIASES = {
    "name": "person_name",
    "address": "postal_address",
    "dob": "date_of_birth",
    "ssn": "national_id",
    "card": "payment_card",
    "credit_card": "payment_card",
    "pan": "payment_card",
    "ip": "ip_address",
    "password": "secret",
    "credential": "secret",
    "token": "secret",
}
