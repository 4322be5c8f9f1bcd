"""The tests' leak finder (tests/support/leaks.py): it finds real values however they are
spelled, and a short run of digits only as a number of its own, not inside a hash."""

from __future__ import annotations

from support.leaks import Secrets

SSN = "536-22-8726"
SECRETS = Secrets([SSN, "4111111111111111"])


def test_a_partial_mask_that_keeps_too_much_is_a_leak() -> None:
    assert SECRETS.leaks("ssn 536-22-****") == ["53622"]
    assert SECRETS.leaks("5 3 6 2 2") == ["53622"]
    assert SECRETS.leaks("6278-22-635") != []  # reversed


def test_the_whole_value_is_found_in_any_company() -> None:
    assert "536228726" in SECRETS.leaks("x536228726y")
    assert "4111111111111111" in SECRETS.leaks("card=4111-1111-1111-1111")


def test_the_last_four_may_show() -> None:
    assert SECRETS.leaks("ssn ***-**-8726") == []


def test_five_digits_inside_hashes_times_and_ports_are_not_a_leak() -> None:
    assert SECRETS.leaks('"hash": "9ab53622f0"') == []
    assert SECRETS.leaks('"time": 1796553622.5') == []
    assert SECRETS.leaks('"client_addr": "127.0.0.1:153622"') == []
