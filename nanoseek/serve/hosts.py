"""The Host header check against DNS rebinding: a page on another site points its own name at 127.0.0.1 and reads
this server's replies as same-origin. Its requests still carry that other name in `Host`, so only the names this
server is reached by are accepted: loopback names, the address it binds, and --allowed-hosts ("*": any)."""
from __future__ import annotations

import ipaddress

from nanoseek.errors import ServeError

LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(bind: str, extra: tuple[str, ...]) -> frozenset[str]:
    names = {*LOOPBACK, *extra}
    if bind not in WILDCARDS:
        names.add(bind)
    return frozenset(_bare(name.lower()) for name in names)


def check_host(header: str | None, allowed: frozenset[str]) -> None:
    """400 unless the Host header (a name or address, with or without a port) is an allowed one."""
    name = _bare(_without_port((header or "").strip().lower()))
    if "*" not in allowed and name not in allowed:
        raise ServeError(f"the Host header {header!r:.80} is not a name of this server (it takes "
                         f"{', '.join(sorted(allowed))}; --allowed-hosts adds more)", 400, code="invalid_host")


def _without_port(host: str) -> str:
    if host.startswith("["):                    # [::1]:8000
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bare(name: str) -> str:
    name = name.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(name))  # one spelling per address
    except ValueError:
        return name

