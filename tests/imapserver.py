"""A real IMAP server for tests and sessions: Debian's Dovecot with a throwaway configuration.

Dovecot runs in the foreground as our child (`dovecot -F`), never as the system service, with
everything (configuration, certificates, Maildirs, sockets, log) in one temporary directory,
in /dev/shm when there is one, that `stop()` removes. It runs "rootless": every Dovecot
process uses one unprivileged user, because Dovecot refuses mail access as root; when the
tests run as root that is the `dovecot` system user the package creates, otherwise the
current user. It listens on 127.0.0.1 only: `port` for plain IMAP and STARTTLS, `tls_port`
for implicit TLS, with a certificate for `localhost` and `127.0.0.1` signed by a CA
generated at start (`ca_file`).

Mailboxes `Sent`, `Drafts` and `Trash` carry the special-use flags when they exist (they are
not created automatically, so a user can be given other names to test fallbacks). A user's
`capability` replaces what Dovecot advertises after login, to play an older server (no SORT,
no SPECIAL-USE, no LITERAL+).

In a session: `server = DovecotServer([ImapUser("me", "pw")]).start()`, seed with
`server.deliver(...)`, point the tool at it with `Settings(**server.imap_settings("me"))`,
and `server.stop()` at the end.
"""

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from devstack import free_port, spawn, stop_process, wait_for_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Login:
    session: str  # Dovecot's session id
    pid: int  # of the imap process serving it
    tls: bool  # whether the connection was encrypted (implicit TLS or STARTTLS)


@dataclass(frozen=True)
class ImapUser:
    name: str
    password: str
    # What the server advertises to this user after login (one token), None for Dovecot's full list.
    capability: str | None = None


class DovecotServer:
    """Start/stop-able Dovecot on loopback; restarts on the same ports with the same mail."""

    def __init__(self, users: list[ImapUser]) -> None:
        self.users = {user.name: user for user in users}
        self.port = free_port()
        self.tls_port = free_port()
        # In memory when possible: a Maildir on disk makes every APPEND and folder wait for fsyncs.
        shm = Path("/dev/shm")
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir=shm if shm.is_dir() else None))
        self.ca_file = self.dir / "ca.pem"
        self.log = self.dir / "dovecot.log"
        self._run_as = "dovecot" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False

    def start(self) -> "DovecotServer":
        """Start (or start again after `stop(keep_data=True)`); on failure everything is removed."""
        try:
            dovecot = shutil.which("dovecot", path="/usr/sbin:/usr/bin")
            if dovecot is None:
                raise RuntimeError(
                    "dovecot is not installed (Debian package dovecot-imapd; `make test` installs it)"
                )
            if not self._prepared:
                self._prepare()
            self._proc = spawn(
                [dovecot, "-F", "-c", str(self.dir / "dovecot.conf")],
                log_path=self.dir / "stdout.log",
                user=self._run_as if os.geteuid() == 0 else None,
            )
            for port in (self.port, self.tls_port):
                wait_for_port(port, self._proc, timeout=15, what="dovecot")
        except BaseException as err:
            log = "\n".join(self._log_text().splitlines()[-20:])
            self.stop()
            raise RuntimeError(f"Dovecot did not start: {err}\n{log}") from err
        return self

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop every Dovecot process, then remove the directory unless kept.

        The master leaves its children (and so open IMAP sessions) running when it stops, so
        the whole process group it leads is signalled, and waited for.
        """
        if self._proc is not None:
            group = self._proc.pid  # the master leads its own process group (see _spawn)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            stop_process(self._proc, sig=signal.SIGTERM, timeout=10)
            _wait_group_gone(group)
            self._proc = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again: every open IMAP connection is cut, the mail stays."""
        self.stop(keep_data=True)
        self.start()

    def kick(self, user: str) -> None:
        """Disconnect the user's open sessions, as an administrator would."""
        doveadm = shutil.which("doveadm", path="/usr/bin:/usr/sbin") or "doveadm"
        config = str(self.dir / "dovecot.conf")
        done = subprocess.run([doveadm, "-c", config, "kick", user], capture_output=True, timeout=15)
        if done.returncode != 0:
            raise RuntimeError(f"doveadm kick {user} failed: {done.stderr.decode(errors='replace')}")

    def logins(self, user: str) -> list[Login]:
        """The user's logins so far, oldest first (from Dovecot's log, which may lag a little)."""
        pattern = rf"imap-login: Info: Login: user=<{re.escape(user)}>,[^\n]*"
        return [
            Login(
                session=re.findall(r"session=<([^>]+)>", line)[-1],
                pid=int(re.findall(r"mpid=(\d+)", line)[-1]),
                tls=", TLS" in line,
            )
            for line in re.findall(pattern, self._log_text())
        ]

    def bytes_sent(self, session: str) -> int | None:
        """What the server sent in a session that has ended (its `out=`), None while it runs."""
        match = re.search(
            rf"<{re.escape(session)}>: Info: [^\n]*?Logged out in=\d+ out=(\d+)", self._log_text()
        )
        return int(match.group(1)) if match else None

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def imap_settings(self, user: str, *, tls: str = "ssl") -> dict[str, Any]:
        """Settings fields (`Settings(**...)`) that point search_emails at this server as `user`."""
        return {
            "imap_host": HOST,
            "imap_port": self.tls_port if tls == "ssl" else self.port,
            "imap_user": user,
            "imap_password": self.users[user].password,
            "imap_tls": tls,
            "imap_ca_file": self.ca_file,
        }

    @contextlib.contextmanager
    def connect(self, user: str) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in stdlib IMAP connection, to seed and inspect mailboxes."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = imaplib.IMAP4_SSL(HOST, self.tls_port, ssl_context=context, timeout=15)
        try:
            conn.login(user, self.users[user].password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def deliver(self, user: str, mailbox: str, message: bytes, *, date: datetime, flags: str = "") -> None:
        """APPEND a message with `date` as its arrival time (INTERNALDATE); creates the mailbox."""
        with self.connect(user) as conn:
            if mailbox.upper() != "INBOX":
                conn.create(_quote(mailbox))
            typ, data = conn.append(
                _quote(mailbox), f"({flags})" if flags else None, imaplib.Time2Internaldate(date), message
            )
            if typ != "OK":
                raise RuntimeError(f"APPEND to {mailbox} failed: {data!r}")

    def deliver_many(self, user: str, mailbox: str, messages: list[tuple[bytes, datetime]]) -> None:
        """`deliver` for many messages over one connection (a login each would take seconds)."""
        with self.connect(user) as conn:
            if mailbox.upper() != "INBOX":
                conn.create(_quote(mailbox))
            for message, date in messages:
                typ, data = conn.append(_quote(mailbox), None, imaplib.Time2Internaldate(date), message)
                if typ != "OK":
                    raise RuntimeError(f"APPEND to {mailbox} failed: {data!r}")

    def make_folders(self, user: str, names: list[str]) -> None:
        """Create empty top-level folders straight in the user's Maildir (thousands take
        milliseconds, where CREATE takes a few each), then LIST them once so Dovecot's folder
        index is up to date. Names must not contain "." or "/"."""
        run_as = pwd.getpwnam(self._run_as)
        maildir = self.dir / "mail" / user / "Maildir"
        for name in names:
            folder = maildir / f".{name}"
            for path in (folder, folder / "cur", folder / "new", folder / "tmp"):
                path.mkdir()
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        with self.connect(user) as conn:
            conn.list()

    def flags(self, user: str, mailbox: str) -> dict[int, set[str]]:
        """UID → flags of every message in the mailbox (read-only)."""
        with self.connect(user) as conn:
            conn.select(_quote(mailbox), readonly=True)
            _, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
        found: dict[int, set[str]] = {}
        for item in data:
            if not isinstance(item, bytes):
                continue
            parsed = imaplib.ParseFlags(item)
            uid = int(item.split(b"UID ", 1)[1].split()[0].rstrip(b")"))
            found[uid] = {flag.decode() for flag in parsed}
        return found

    def _prepare(self) -> None:
        self._make_certificates()
        run_as = pwd.getpwnam(self._run_as)
        lines = []
        for user in self.users.values():
            extra = f"userdb_imap_capability={user.capability}" if user.capability else ""
            home = self.dir / "mail" / user.name
            home.mkdir(parents=True)
            lines.append(
                f"{user.name}:{{PLAIN}}{user.password}:{run_as.pw_uid}:{run_as.pw_gid}::{home}::{extra}"
            )
        (self.dir / "users").write_text("\n".join(lines) + "\n")
        config = _CONFIG.format(dir=self.dir, user=self._run_as, port=self.port, tls_port=self.tls_port)
        (self.dir / "dovecot.conf").write_text(config)
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, run_as.pw_uid, run_as.pw_gid)
        self._prepared = True

    def _make_certificates(self) -> None:
        d = self.dir
        (d / "server.ext").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
        sign = [
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]
        for args in (
            [
                "req",
                "-x509",
                "-days",
                "2",
                *key,
                *ca,
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=Test IMAP CA",
            ],
            ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", "server.csr", *sign, "-out", "server.pem"],
        ):
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)


def _wait_group_gone(group: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            os.killpg(group, 0)
            time.sleep(0.05)
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Rootless: no chroot (needs root), every service as `user`. No fsync (throwaway mail).
_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = test-dovecot-{port}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
default_internal_user = {user}
default_internal_group = {user}
default_login_user = {user}
first_valid_uid = 1
first_valid_gid = 1
auth_failure_delay = 0
auth_verbose = yes
disable_plaintext_auth = no
ssl = yes
ssl_cert = <{dir}/server.pem
ssl_key = <{dir}/server.key
mail_location = maildir:~/Maildir
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/users
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No login delays after a failed login (Dovecot's per-IP auth penalty): tests fail on purpose.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service ipc {{
  chroot =
}}
service aggregator {{
  chroot =
}}
service old-stats {{
  chroot =
}}
"""
