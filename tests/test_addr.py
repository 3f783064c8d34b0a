"""HOST:PORT for both families, and name resolution in getaddrinfo's order (fake resolvers)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tcpscapy import errors
from tcpscapy.addr import HostPort, Resolved, parse_host_port, resolve


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.2:80", HostPort("10.0.0.2", 80, 4)),
    ("[2001:db8::2]:443", HostPort("2001:db8::2", 443, 6)),
    ("[2001:DB8:0:0::0002]:443", HostPort("2001:db8::2", 443, 6)),  # canonical text
    ("[::1]:8080", HostPort("::1", 8080, 6)),
    ("[fe80::1%eth0]:80", HostPort("fe80::1", 80, 6, "eth0")),
    ("[fe80::1%2]:80", HostPort("fe80::1", 80, 6, "2")),
    ("  example.org:http ", HostPort("example.org", 80)),
    ("localhost:22", HostPort("localhost", 22)),
])
def test_accepted(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


def test_listen_forms() -> None:
    assert parse_host_port("8080", host_optional=True) == HostPort(None, 8080)
    assert parse_host_port("[::]:0", host_optional=True) == HostPort("::", 0, 6)
    assert parse_host_port("0.0.0.0:80", host_optional=True) == HostPort("0.0.0.0", 80, 4)


def test_str_writes_the_bracketed_form_back() -> None:
    assert str(parse_host_port("[fe80::1%eth0]:80")) == "[fe80::1%eth0]:80"
    assert str(parse_host_port("10.0.0.2:80")) == "10.0.0.2:80"


@pytest.mark.parametrize(("text", "says"), [
    ("::1:80", "needs brackets: [::1]:80"),
    ("2001:db8::2:443", "needs brackets: [2001:db8::2]:443"),
    ("::1", "needs brackets and a port: [::1]:PORT"),
    ("::1:80:", "not HOST:PORT, and not an IPv6 address either"),
    ("[::1", "missing ']'"),
    ("[::1]", "a port after ']:'"),
    ("[::1]:", "a port after ']:'"),
    ("[::1]80", "a port after ']:'"),
    ("[::1]:99999", "bad port '99999'"),
    ("[::1]:0", "bad port '0'"),
    ("[::1]:htttp", "unknown service 'htttp'"),
    ("[10.0.0.1]:80", "brackets are for IPv6"),
    ("[fe80::zz]:80", "is not an IPv6 address"),
    ("[2001:db8::1%eth0]:80", "goes only with a link-local address"),
    ("[fe80::1]:80", "needs a zone naming the link, like [fe80::1%eth0]"),
    ("[fe80::1%eth/0]:80", "bad zone"),
    ("[::ffff:10.0.0.1]:80", "IPv4-mapped address; use the IPv4 address 10.0.0.1"),
    ("[ff02::1]:80", "multicast"),
    ("10.0.0.256:80", "neither an IPv4 address nor a host name"),
    ("1.2.3:80", "neither an IPv4 address nor a host name"),
    ("exa mple:80", "neither an IPv4 address nor a host name"),
    (":80", "the host is empty"),
    ("example.org", "expected HOST:PORT"),
])
def test_refused_in_one_line_with_exit_code_2(text: str, says: str) -> None:
    with pytest.raises(errors.BadAddress) as info:
        parse_host_port(text)
    message = str(info.value)
    assert says in message and "\n" not in message
    assert errors.exit_code(info.value) == 2


def test_a_literal_of_the_other_family_is_a_usage_error() -> None:
    with pytest.raises(errors.UsageError, match="an IPv6 address, but -4 asks for IPv4"):
        parse_host_port("[::1]:80", family=4)
    with pytest.raises(errors.UsageError, match="an IPv4 address, but -6 asks for IPv6"):
        parse_host_port("10.0.0.1:80", family=6)
    assert parse_host_port("[::1]:80", family=6).family == 6


# ------------------------------------------------------------------ resolution

def fake(answers: list[tuple[int, tuple[Any, ...]]], calls: list[int] | None = None) -> Any:
    def getaddrinfo(host: str, port: object, family: int, kind: int) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(family)
        found = [(fam, kind, 6, "", addr) for fam, addr in answers
                 if family in (socket.AF_UNSPEC, fam)]
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return found
    return getaddrinfo


DUAL = [(socket.AF_INET6, ("2001:db8::5", 0, 0, 0)), (socket.AF_INET, ("192.0.2.5", 0)),
        (socket.AF_INET6, ("2001:db8::5", 0, 0, 0))]  # a duplicate, as for several socktypes


def test_a_name_resolves_in_getaddrinfo_order_without_duplicates() -> None:
    found = resolve(parse_host_port("www.example:80"), resolver=fake(DUAL))
    assert found == [Resolved(6, "2001:db8::5", 80), Resolved(4, "192.0.2.5", 80)]


@pytest.mark.parametrize(("family", "asked", "ips"), [
    (4, socket.AF_INET, ["192.0.2.5"]), (6, socket.AF_INET6, ["2001:db8::5"])])
def test_minus_4_and_minus_6_ask_for_one_family(family: int, asked: int, ips: list[str]) -> None:
    calls: list[int] = []
    found = resolve(parse_host_port("www.example:80"), family=family, resolver=fake(DUAL, calls))
    assert [r.ip for r in found] == ips and calls == [asked]


def test_no_address_of_the_family_is_unknown_host_exit_7() -> None:
    only4 = fake([(socket.AF_INET, ("192.0.2.5", 0))])
    with pytest.raises(errors.UnknownHost, match="cannot resolve 'v4only': ") as info:
        resolve(parse_host_port("v4only:80"), family=6, resolver=only4)
    assert errors.exit_code(info.value) == 7
    with pytest.raises(errors.UnknownHost, match="no IPv4 or IPv6 address"):
        resolve(parse_host_port("odd:80"), resolver=fake(
            [(socket.AF_INET6, ("::ffff:192.0.2.5", 0, 0, 0))]))  # mapped answers are skipped


def test_literals_resolve_to_themselves_with_the_zone_as_scope() -> None:
    assert resolve(parse_host_port("[::1]:80"), resolver=None) == [Resolved(6, "::1", 80)]
    index = {"eth0": 3}.__getitem__

    def index_of(name: str) -> int:
        try:
            return index(name)
        except KeyError:
            raise OSError("no such device") from None

    ll = parse_host_port("[fe80::1%eth0]:80")
    assert resolve(ll, index_of=index_of) == [Resolved(6, "fe80::1", 80, 3)]
    assert resolve(parse_host_port("[fe80::1%7]:80"), index_of=index_of)[0].scope_id == 7
    with pytest.raises(errors.BadAddress, match="no interface 'eth9' for the zone"):
        resolve(parse_host_port("[fe80::1%eth9]:80"), index_of=index_of)
    with pytest.raises(errors.UsageError, match="-4 asks for IPv4"):
        resolve(ll, family=4, index_of=index_of)


def test_link_local_answers_keep_their_scope_and_unscoped_ones_are_dropped() -> None:
    answers = [(socket.AF_INET6, ("fe80::9", 0, 0, 0)), (socket.AF_INET6, ("fe80::8", 0, 0, 4))]
    assert resolve(parse_host_port("router:80"), resolver=fake(answers)) == [
        Resolved(6, "fe80::8", 80, 4)]


def test_the_real_resolver_with_a_numeric_name() -> None:
    """No network: glibc answers localhost from /etc/hosts."""
    found = resolve(parse_host_port("localhost:80"), family=4)
    assert found[0] == Resolved(4, "127.0.0.1", 80)
