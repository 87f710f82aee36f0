"""One table of process variables served over Channel Access (caproto) and PV Access (p4p).

Why two pure-library servers instead of an EPICS record database: facility clients expect
motor-record fields (``FOCUS:Z.VAL``, ``.RBV``, ``.DMOV``, ``.HLM`` ...) on the axes, and soft-IOC
record support offers no motor record. caproto serves any name, fields included, over CA; p4p
(pvxs) serves the same names over PVA, with NTNDArray images. Both are views of one
:class:`PV` object, so a CA put is seen by PVA monitors and the other way round.

A client put runs :attr:`PV.on_put` (an ``async`` function) on the server's event loop; the
put-callback (CA WRITE_NOTIFY, PVA put with ``wait``) completes when it returns. A put it
refuses raises :class:`PutRefused`: the client's put fails (CA ``ECA_PUTFAIL``, PVA error),
the PV goes to a MAJOR WRITE alarm, and ``on_refused`` reports the reason (the IOC's status
PV). Values coming from the instrument go in with :meth:`PV.set` from any thread.

Importing this module loads caproto and p4p; apply :mod:`xinstrument.epics.network` first.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("xinstrument.epics")

# EPICS alarm severities and the status codes the IOC uses (epicsAlarmCondition, alarm.h)
NO_ALARM, MINOR, MAJOR, INVALID = 0, 1, 2, 3
STATUS = {"NO_ALARM": 0, "READ": 1, "WRITE": 2, "HIHI": 3, "HIGH": 4, "LOLO": 5, "LOW": 6,
          "STATE": 7, "COS": 8, "COMM": 9, "TIMEOUT": 10, "HW_LIMIT": 11, "CALC": 12,
          "SCAN": 13, "LINK": 14, "SOFT": 15, "BAD_SUB": 16, "UDF": 17, "DISABLE": 18}
KINDS = ("float", "int", "enum", "string", "char", "array", "ndarray")
STRING_MAX = 40          # DBR_STRING


class PutRefused(Exception):
    """A client put the IOC does not carry out; the message names the value asked for and the
    limit or state that refuses it."""


@dataclass(eq=False)
class PV:
    """One process variable.

    ``kind``: ``float`` | ``int`` | ``enum`` (``choices``) | ``string`` (at most 40 characters)
    | ``char`` (a long string served as a CA char waveform, a PVA string) | ``array`` (float32
    waveform of ``length`` elements) | ``ndarray`` (an image: a CA float32 waveform and a PVA
    NTNDArray). ``limits`` are the control limits clients read (and check puts against, here
    as well). ``on_put`` is None for a read-only PV; ``store`` is False when the handler sets the
    value itself.
    """

    name: str
    kind: str
    value: Any
    doc: str = ""
    units: str = ""
    precision: int = 0
    limits: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    length: int = 1
    on_put: Callable[[Any], Awaitable[Any]] | None = None
    store: bool = True
    allow_nonfinite: bool = False
    enforce_limits: bool = True
    pva_only: bool = False
    ca_only: bool = False
    group: str = ""
    severity: int = NO_ALARM
    status: int = 0
    timestamp: float = field(default_factory=time.time)
    unique_id: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PV {self.name}: unknown kind {self.kind!r}")
        self._views: list[Any] = []
        self._lock = threading.Lock()
        self.value = self._coerce_internal(self.value)

    @property
    def writable(self) -> bool:
        return self.on_put is not None

    # --- values from the instrument ------------------------------------------------------------
    def _coerce_internal(self, value):
        if self.kind == "float":
            return float(value)
        if self.kind == "int":
            return int(value)
        if self.kind == "enum":
            return int(value)
        if self.kind in ("string", "char"):
            limit = STRING_MAX - 1 if self.kind == "string" else self.length - 1
            return str(value)[:limit]
        arr = np.asarray(value, dtype=np.float32)
        return arr if self.kind == "ndarray" else arr.ravel()[: self.length]

    def get(self):
        return self.value

    def set(self, value, severity: int = NO_ALARM, status: int | str = 0,
            unique_id: int | None = None) -> None:
        """New value (and alarm) from the instrument; thread-safe, published to every view."""
        if isinstance(status, str):
            status = STATUS[status]
        with self._lock:
            self.value = self._coerce_internal(value)
            self.severity, self.status = int(severity), int(status)
            self.timestamp = time.time()
            if unique_id is not None:
                self.unique_id = int(unique_id)
            for view in self._views:
                view.update(self)

    def set_alarm(self, severity: int, status: int | str) -> None:
        self.set(self.value, severity, status)

    def set_limits(self, lo: float, hi: float) -> None:
        with self._lock:
            self.limits = (float(lo), float(hi))
            for view in self._views:
                view.update_limits(self)

    # --- values from clients --------------------------------------------------------------------
    def parse(self, raw) -> Any:
        """A client's value in this PV's type, or PutRefused naming what is wrong."""
        vector = ("array", "ndarray", "string", "char")     # char waveforms arrive as arrays
        if isinstance(raw, np.ndarray) and raw.ndim and self.kind not in vector:
            if raw.size != 1:
                raise PutRefused(f"{self.name}: one value expected, got {raw.size}")
            raw = raw.reshape(-1)[0]
        if isinstance(raw, (list, tuple)) and self.kind not in vector:
            if len(raw) != 1:
                raise PutRefused(f"{self.name}: one value expected, got {len(raw)}")
            raw = raw[0]
        if isinstance(raw, bytes):
            raw = raw.decode("latin-1")
        if self.kind == "float":
            try:
                v = float(raw)
            except (TypeError, ValueError):
                raise PutRefused(f"{self.name}: {raw!r} is not a number") from None
            if not math.isfinite(v) and not self.allow_nonfinite:
                raise PutRefused(f"{self.name}: {v} is not a finite number")
            self.check_limits(v)
            return v
        if self.kind == "int":
            try:
                f = float(raw)
            except (TypeError, ValueError):
                raise PutRefused(f"{self.name}: {raw!r} is not an integer") from None
            if not math.isfinite(f) or f != int(f):
                raise PutRefused(f"{self.name}: {raw!r} is not an integer")
            self.check_limits(int(f))
            return int(f)
        if self.kind == "enum":
            if isinstance(raw, str) and not raw.strip().lstrip("-").isdigit():
                if raw not in self.choices:
                    raise PutRefused(f"{self.name}: {raw!r} is not one of "
                                     f"{', '.join(self.choices)}")
                return self.choices.index(raw)
            try:
                i = int(raw)
            except (TypeError, ValueError):
                raise PutRefused(f"{self.name}: {raw!r} is not a choice") from None
            if not 0 <= i < len(self.choices):
                raise PutRefused(f"{self.name}: choice {i} outside 0..{len(self.choices) - 1} "
                                 f"({', '.join(self.choices)})")
            return i
        if self.kind in ("string", "char"):
            if isinstance(raw, (np.ndarray, list, tuple)):     # a char waveform
                arr = np.asarray(raw).ravel()
                if arr.dtype.kind in "US":      # one string in a list
                    raw = str(arr[0]) if arr.size == 1 else "".join(map(str, arr))
                else:
                    raw = bytes(int(c) & 0xFF for c in arr).split(b"\0")[0].decode("latin-1")
            text = str(raw)
            limit = STRING_MAX - 1 if self.kind == "string" else self.length - 1
            if len(text) > limit:
                raise PutRefused(f"{self.name}: {len(text)} characters, at most {limit}")
            return text
        raise PutRefused(f"{self.name} is read-only")

    def check_limits(self, v: float) -> None:
        if self.enforce_limits and self.limits is not None and not self.limits[0] <= v <= self.limits[1]:
            u = f" {self.units}" if self.units else ""
            raise PutRefused(f"{self.name}: {v:g}{u} outside {self.limits[0]:g}.."
                             f"{self.limits[1]:g}{u}")

    def enum_string(self) -> str:
        return self.choices[self.value] if 0 <= self.value < len(self.choices) else ""


class PVTable:
    """The IOC's PVs by full name (prefix included); aliases share one :class:`PV`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pvs: dict[str, PV] = {}
        self.aliases: dict[str, str] = {}
        self.on_refused: Callable[[PV, Any, str], None] = lambda pv, value, why: None
        self.on_done: Callable[[PV, Any], None] = lambda pv, value: None
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, pv: PV) -> PV:
        pv.name = self.prefix + pv.name
        if pv.name in self.pvs or pv.name in self.aliases:
            raise ValueError(f"PV {pv.name} defined twice")
        self.pvs[pv.name] = pv
        return pv

    def alias(self, alias: str, target: PV) -> None:
        full = self.prefix + alias
        if full in self.pvs or full in self.aliases:
            raise ValueError(f"PV {full} defined twice")
        self.aliases[full] = target.name

    def names(self) -> list[str]:
        return list(self.pvs) + list(self.aliases)

    def lookup(self, name: str) -> PV:
        return self.pvs[self.aliases.get(name, name)]

    async def client_put(self, pv: PV, raw) -> None:
        """A put from a client (either protocol): checked, carried out, stored; raises
        PutRefused with the reason otherwise."""
        try:
            if pv.on_put is None:
                raise PutRefused(f"{pv.name} is read-only")
            value = pv.parse(raw)
            result = await pv.on_put(value)
        except PutRefused as exc:
            self._refused(pv, raw, str(exc))
            raise
        except Exception as exc:
            self._refused(pv, raw, f"{pv.name}: {exc}")
            raise PutRefused(f"{pv.name}: {exc}") from exc
        if pv.store:
            pv.set(value if result is None else result)
        self.on_done(pv, value)

    def _refused(self, pv: PV, raw, why: str) -> None:
        log.warning("put refused: %s", why)
        with contextlib.suppress(Exception):
            pv.set_alarm(MAJOR, "WRITE")
        with contextlib.suppress(Exception):
            self.on_refused(pv, raw, why)


# --- access rights ------------------------------------------------------------------------------
@dataclass
class AccessRules:
    """Who may write: host names (as CA clients announce them, or resolved to addresses for
    PVA peers) and user names; None means anyone. Reads are open to all."""
    hosts: set[str] | None = None
    users: set[str] | None = None
    read_hosts: set[str] | None = None

    def _addresses(self, hosts: set[str]) -> set[str]:
        out = set()
        for h in hosts:
            with contextlib.suppress(OSError):
                out.add(socket.gethostbyname(h))
        return out

    def may_write(self, host: str, user: str = "") -> bool:
        if self.hosts is not None:
            names = {h.lower() for h in self.hosts}
            if host.lower() not in names and host not in self._addresses(self.hosts):
                return False
        return self.users is None or user in self.users

    def may_read(self, host: str) -> bool:
        return self.read_hosts is None or host.lower() in {h.lower() for h in self.read_hosts} \
            or host in self._addresses(self.read_hosts)


def parse_acf(text: str) -> AccessRules:
    """The subset of an EPICS access security file that applies to every PV of this IOC:
    HAG and UAG groups and the DEFAULT access security group's READ/WRITE rules (level 1)."""
    import re
    body = re.sub(r"#[^\n]*", "", text)
    groups: dict[str, set[str]] = {}
    for kind, name, members in re.findall(r"\b(HAG|UAG)\s*\(\s*(\w+)\s*\)\s*\{([^}]*)\}", body):
        groups[f"{kind}:{name}"] = {m.strip().strip('"') for m in members.split(",") if m.strip()}
    m = re.search(r"\bASG\s*\(\s*DEFAULT\s*\)\s*\{", body)
    if m is None:
        raise ValueError("no ASG(DEFAULT) group")
    depth, i = 1, m.end()
    while depth and i < len(body):
        depth += {"{": 1, "}": -1}.get(body[i], 0)
        i += 1
    asg = body[m.end():i - 1]
    rules = AccessRules(hosts=set(), users=None, read_hosts=set())
    any_write = False
    any_read = False
    for level, what, cond in re.findall(
            r"RULE\s*\(\s*(\d+)\s*,\s*(\w+)[^)]*\)\s*(\{[^}]*\})?", asg):
        what = what.upper()
        hags = {h for g in re.findall(r"HAG\s*\(([^)]*)\)", cond or "")
                for h in groups.get(f"HAG:{g.strip()}", set())}
        uags = {u for g in re.findall(r"UAG\s*\(([^)]*)\)", cond or "")
                for u in groups.get(f"UAG:{g.strip()}", set())}
        if what == "WRITE":
            any_write = True
            if not cond:
                rules.hosts = None
            elif rules.hosts is not None:
                rules.hosts |= hags if hags else set()
                if not hags and not uags:
                    rules.hosts = None
            if uags:
                rules.users = (rules.users or set()) | uags
        if what in ("READ", "WRITE"):
            any_read = True
            if not cond or not hags:
                rules.read_hosts = None
            elif rules.read_hosts is not None:
                rules.read_hosts |= hags
        if what not in ("READ", "WRITE", "NONE"):
            raise ValueError(f"unknown access {what!r} in a RULE")
    if not any_write:
        rules.hosts = set()          # nobody writes
    if not any_read:
        rules.read_hosts = set()
    return rules


# --- Channel Access (caproto) --------------------------------------------------------------------
class CAServer:
    """The table served over Channel Access by caproto's asyncio server."""

    def __init__(self, table: PVTable, access: AccessRules | None = None) -> None:
        from caproto import ChannelType  # noqa: F401 - caproto loaded here, not at import
        self.table = table
        self.access = access
        self.pvdb: dict[str, Any] = {}
        self._chan: dict[str, Any] = {}
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.context = None
        for name, pv in table.pvs.items():
            if pv.pva_only:
                continue
            chan = self._make(pv)
            self._chan[name] = chan
            self.pvdb[name] = chan
            pv._views.append(self)
        for alias, target in table.aliases.items():
            if target in self._chan:
                self.pvdb[alias] = self._chan[target]

    def _make(self, pv: PV):
        import caproto
        from caproto import AccessRights, SkipWrite
        server = self

        class Mixin:
            async def verify_value(self, data):
                try:
                    await server.table.client_put(pv, data)
                finally:
                    # readbacks, alarms and the status message reach monitors before the
                    # put's reply, success or failure
                    await server.drain()
                return SkipWrite

            async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
                try:
                    return await super().write_from_dbr(data, data_type, metadata,
                                                        flags=flags)
                except PutRefused:
                    raise
                except Exception as exc:  # noqa: BLE001 - a value caproto cannot convert
                    shown = data
                    with contextlib.suppress(Exception):
                        shown = data[0] if len(data) == 1 else data
                    if isinstance(shown, bytes):
                        shown = shown.split(b"\0")[0].decode("latin-1")
                    what = "a number" if pv.kind in ("float", "int") else f"a {pv.kind}"
                    why = f"{pv.name}: {shown!r} is not {what} ({exc})"
                    server.table._refused(pv, shown, why)
                    await server.drain()
                    raise PutRefused(why) from None

            def get_field(self, field):
                """Common record fields of every PV: VAL, DESC, NAME, EGU, PREC, DISA."""
                cache = self.__dict__.setdefault("_xi_fields", {})
                if field in cache:
                    return cache[field]
                if field == "VAL":
                    return self
                make = {"DESC": lambda: caproto.ChannelString(value=pv.doc[:STRING_MAX - 1]),
                        "NAME": lambda: caproto.ChannelString(value=pv.name[:STRING_MAX - 1]),
                        "EGU": lambda: caproto.ChannelString(value=pv.units),
                        "PREC": lambda: caproto.ChannelInteger(value=pv.precision),
                        "DISA": lambda: caproto.ChannelInteger(value=0)}.get(field)
                if make is None:
                    raise KeyError(field)
                cache[field] = make()
                return cache[field]

            def check_access(self, hostname, username):
                rules = server.access
                if rules is None:
                    return AccessRights.READ | AccessRights.WRITE if pv.writable \
                        else AccessRights.READ
                rights = AccessRights.READ if rules.may_read(hostname) else \
                    AccessRights.NO_ACCESS
                if pv.writable and rules.may_write(hostname, username):
                    rights |= AccessRights.WRITE
                return rights

        limits = {}
        if pv.limits is not None:
            limits = {"lower_ctrl_limit": pv.limits[0], "upper_ctrl_limit": pv.limits[1],
                      "lower_disp_limit": pv.limits[0], "upper_disp_limit": pv.limits[1]}
        common = {"reported_record_type": _record_type(pv)}
        if pv.kind == "float":
            cls = type("XDouble", (Mixin, caproto.ChannelDouble), {})
            return cls(value=pv.value, units=pv.units, precision=pv.precision, **limits, **common)
        if pv.kind == "int":
            cls = type("XInteger", (Mixin, caproto.ChannelInteger), {})
            return cls(value=pv.value, units=pv.units, **limits, **common)
        if pv.kind == "enum":
            cls = type("XEnum", (Mixin, caproto.ChannelEnum), {})
            return cls(value=pv.enum_string(), enum_strings=list(pv.choices), **common)
        if pv.kind == "string":
            cls = type("XString", (Mixin, caproto.ChannelString), {})
            return cls(value=pv.value, **common)
        if pv.kind == "char":
            cls = type("XChar", (Mixin, caproto.ChannelChar), {})
            return cls(value=pv.value, max_length=pv.length, **common)
        cls = type("XArray", (Mixin, caproto.ChannelFloat), {})
        length = pv.length
        return cls(value=np.zeros(length, np.float32) if pv.kind == "ndarray" else pv.value,
                   max_length=length, units=pv.units, max_subscription_backlog=10_000, **common)

    def _wire(self, pv: PV):
        if pv.kind == "enum":
            return pv.enum_string()
        if pv.kind == "ndarray":
            return np.ascontiguousarray(pv.value, np.float32).ravel()
        return pv.value

    def update(self, pv: PV) -> None:
        chan = self._chan.get(pv.name)
        if chan is None or self._loop is None:
            if chan is not None:      # before the server runs: straight into the channel
                chan._data["value"] = chan.preprocess_value(self._wire(pv))
            return
        item = ("value", chan, self._wire(pv), pv.severity, pv.status, pv.timestamp)
        self._put(item)

    def update_limits(self, pv: PV) -> None:
        chan = self._chan.get(pv.name)
        if chan is None or pv.limits is None:
            return
        lo, hi = pv.limits
        item = ("limits", chan, {"lower_ctrl_limit": lo, "upper_ctrl_limit": hi,
                                 "lower_disp_limit": lo, "upper_disp_limit": hi})
        if self._loop is None:
            chan._data.update(item[2])
        else:
            self._put(item)

    def _put(self, item) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # one FIFO for every thread: an update set in the loop goes behind those that worker
        # threads scheduled before it (a move's last readback before its DMOV 1)
        if running is loop:
            loop.call_soon(self._queue.put_nowait, item)
        else:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def drain(self) -> None:
        """Wait until every update queued so far has reached the channels (a put's readback is
        in place before its completion goes to the client)."""
        if self._queue is not None:
            await asyncio.sleep(0)       # updates scheduled so far are in the queue
            await self._queue.join()
        # ... and the monitor updates they caused are on the wire before the put's reply
        # (caproto queues them through two asyncio queues; the reply goes straight out)
        ctx = self.context
        if ctx is None:
            return
        for _ in range(200):
            queues = [ctx.subscription_queue] + [c.subscription_queue for c in ctx.circuits]
            if all(q.empty() for q in queues):
                break
            await asyncio.sleep(0)
        # a batch being gathered is sent within caproto's high-load timeout (10 ms)
        await asyncio.sleep(0.025)

    async def _writer(self) -> None:
        from caproto import AlarmSeverity, AlarmStatus
        q = self._queue
        while True:
            item = await q.get()
            try:
                if item[0] == "value":
                    _, chan, value, sev, stat, ts = item
                    await chan.write(value, verify_value=False, severity=AlarmSeverity(sev),
                                     status=AlarmStatus(stat), timestamp=ts)
                else:
                    await item[1].write_metadata(**item[2])
            except Exception:
                log.exception("CA update failed")
            finally:
                q.task_done()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        import os

        from caproto.asyncio.server import Context as _Context

        class Context(_Context):
            async def tcp_handler(self, client, addr):
                """Each circuit sends with Nagle off, as rsrv does. caproto's listening socket
                is opened without IPPROTO_TCP, so asyncio leaves Nagle on: a small reply
                written while an earlier one is unacknowledged then waits for the client's
                delayed ACK (40 ms on Linux) and lands just ahead of later monitor updates,
                where pyepics lets the older read overwrite the newer monitored value."""
                sock = client.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await super().tcp_handler(client, addr)

            async def broadcast_beacon_loop(self):
                """Beacons (to EPICS_CAS_BEACON_ADDR_LIST only) that survive a peer's port
                being closed: caproto's own loop ends on a refused datagram."""
                period = 0.02
                while True:
                    for interface, sock in self.beacon_socks.values():
                        try:
                            beacon = ca.Beacon(13, self.port, self.beacon_count, interface)
                            await sock.send(self.broadcaster.send(beacon))
                        except Exception:  # noqa: BLE001, S110 - no repeater listening: fine
                            pass
                    self.beacon_count += 1
                    period = min(float(self.environ["EPICS_CAS_BEACON_PERIOD"]), period * 2)
                    await asyncio.sleep(period)

        import caproto as ca
        # beacons go to the CA repeater's port, as EPICS servers send them
        if "EPICS_CA_REPEATER_PORT" in os.environ:
            os.environ.setdefault("EPICS_CAS_BEACON_PORT", os.environ["EPICS_CA_REPEATER_PORT"])
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        # values set before the loop ran were put straight in; alarms and stamps go now
        for name, chan in self._chan.items():
            pv = self.table.pvs[name]
            self._queue.put_nowait(("value", chan, self._wire(pv), pv.severity, pv.status,
                                    pv.timestamp))
        writer = asyncio.ensure_future(self._writer())
        self.context = Context(self.pvdb)

        async def started(async_lib):
            if ready is not None:
                ready()
        try:
            await self.context.run(startup_hook=started)
        finally:
            writer.cancel()


def _record_type(pv: PV) -> str:
    if pv.name.endswith((".VAL", ".RBV", ".DMOV")) or "." in pv.name:
        return "motor"
    return {"float": "ao" if pv.writable else "ai", "int": "longout" if pv.writable
            else "longin", "enum": "mbbo" if pv.writable else "mbbi",
            "string": "stringout" if pv.writable else "stringin", "char": "waveform",
            "array": "waveform", "ndarray": "waveform"}[pv.kind]


# --- PV Access (p4p) ----------------------------------------------------------------------------
class PVAServer:
    """The table served over PV Access by p4p: NTScalar / NTEnum / NTScalarArray, and
    NTNDArray for images."""

    def __init__(self, table: PVTable, access: AccessRules | None = None) -> None:
        from p4p.server import StaticProvider
        self.table = table
        self.access = access
        self.provider = StaticProvider("xinstrument")
        self._shared: dict[str, Any] = {}
        self._nts: dict[str, Any] = {}
        self.server = None
        for name, pv in table.pvs.items():
            if pv.ca_only:
                continue
            shared = self._make(pv)
            self._shared[name] = shared
            self.provider.add(name, shared)
            pv._views.append(self)
        for alias, target in table.aliases.items():
            if target in self._shared:
                self.provider.add(alias, self._shared[target])

    def _nt(self, pv: PV):
        """One normative-type builder per PV: every post must carry the exact type the PV
        was opened with."""
        nt = self._nts.get(pv.name)
        if nt is None:
            nt = self._nts[pv.name] = self._make_nt(pv)
        return nt

    def _make_nt(self, pv: PV):
        from p4p.nt import NTEnum, NTNDArray, NTScalar
        if pv.kind == "ndarray":
            return NTNDArray()
        if pv.kind == "enum":
            return NTEnum(display=False)
        code = {"float": "d", "int": "i", "string": "s", "char": "s", "array": "af"}[pv.kind]
        return NTScalar(code, display=pv.kind in ("float", "int", "array"),
                        control=pv.kind in ("float", "int"))

    def _value(self, pv: PV):
        nt = self._nt(pv)
        sec = int(pv.timestamp)
        stamp = {"secondsPastEpoch": sec, "nanoseconds": int((pv.timestamp - sec) * 1e9)}
        alarm = {"severity": pv.severity, "status": 1 if pv.severity else 0, "message":
                 _status_name(pv.status)}
        if pv.kind == "ndarray":
            v = nt.wrap(np.asarray(pv.value, np.float32))
            v["uniqueId"] = pv.unique_id
            v["timeStamp"] = stamp
            v["dataTimeStamp"] = stamp
            v["alarm"] = alarm
            return v
        if pv.kind == "enum":
            v = nt.wrap({"index": pv.value, "choices": list(pv.choices)})
        else:
            v = nt.wrap(pv.value)
        v["timeStamp"] = stamp
        v["alarm"] = alarm
        if pv.kind in ("float", "int", "array"):
            v["display.units"] = pv.units
            if pv.kind == "float":
                v["display.format"] = f"%.{pv.precision}f"
            if pv.limits is not None:
                v["display.limitLow"], v["display.limitHigh"] = pv.limits
                if pv.kind != "array":
                    v["control.limitLow"], v["control.limitHigh"] = pv.limits
        return v

    def _make(self, pv: PV):
        from p4p.server.thread import SharedPV
        table, rules = self.table, self.access

        class Handler:
            def put(self, shared, op):
                host = op.peer().rsplit(":", 1)[0].strip("[]")
                if not pv.writable or (rules is not None and not rules.may_write(
                        host, op.account())):
                    op.done(error=f"{pv.name}: write access denied")
                    return
                raw = op.value()
                try:
                    raw = raw["value"]
                except (KeyError, TypeError, ValueError):
                    pass
                if pv.kind == "enum" and hasattr(raw, "get"):
                    raw = raw.get("index", raw)
                if table.loop is None:
                    op.done(error="IOC not running")
                    return
                fut = asyncio.run_coroutine_threadsafe(table.client_put(pv, raw), table.loop)

                def finished(f):
                    exc = f.exception()
                    op.done(error=str(exc) if exc is not None else None)
                fut.add_done_callback(finished)

        return SharedPV(initial=self._value(pv), handler=Handler())

    def update(self, pv: PV) -> None:
        shared = self._shared.get(pv.name)
        if shared is not None:
            try:
                shared.post(self._value(pv))
            except Exception:
                log.exception("PVA update of %s failed", pv.name)

    def update_limits(self, pv: PV) -> None:
        self.update(pv)

    def start(self) -> None:
        import os

        from p4p.server import Server
        # configuration from the EPICS_PVA(S)_* environment (loopback by default)
        conf = {k: v for k, v in os.environ.items() if k.startswith("EPICS_PVA")}
        if conf.get("EPICS_PVAS_INTF_ADDR_LIST", "").split(":")[0] == "127.0.0.1":
            # pvxs sends beacons from a socket it leaves bound to the wildcard address; on
            # loopback, clients find the server by searching, so no beacons are sent
            conf["EPICS_PVAS_BEACON_ADDR_LIST"] = ""
            conf["EPICS_PVAS_AUTO_BEACON_ADDR_LIST"] = "NO"
        self.server = Server(providers=[self.provider], conf=conf, useenv=False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _status_name(code: int) -> str:
    for k, v in STATUS.items():
        if v == code:
            return "" if k == "NO_ALARM" else k
    return ""


def iter_docs(table: PVTable) -> Iterable[tuple[str, PV, list[str]]]:
    """(name, PV, aliases) in table order, for documentation."""
    back: dict[str, list[str]] = {}
    for alias, target in table.aliases.items():
        back.setdefault(target, []).append(alias)
    for name, pv in table.pvs.items():
        yield name, pv, back.get(name, [])
