"""TLS for the servers tools log in to (SMTP, IMAP): the certificate and host name are always
verified, against a CA bundle the operator names or the system's CAs."""

import ssl
from pathlib import Path

from core.errors import ConfigurationError


def verifying_context(ca_file: Path | None, setting: str) -> ssl.SSLContext:
    """A client context trusting `ca_file` (the `setting` that named it) or the system CAs."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigurationError(f"{setting} {ca_file} cannot be used: {err}") from err
