"""`send_email` as a tool: always behind a person's approval, sent exactly once."""

from typing import Any

from store.db import Pool
from tools.base import InvalidArguments, ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.email import (
    SEND_EMAIL_DESCRIPTION,
    SEND_EMAIL_SCHEMA,
    DeliveryUncertain,
    EmailInvalid,
    EmailPermanentError,
    EmailSender,
    EmailTransientError,
    SmtpConfig,
    validate_send_email,
)


class SendEmailTool:
    """Nothing is sent without an approval; the outbox makes retries safe."""

    spec = ToolSpec(
        name="send_email",
        description=SEND_EMAIL_DESCRIPTION,
        input_schema=SEND_EMAIL_SCHEMA,
        requires_confirmation=True,
        policy="email",
    )

    def __init__(self, config: SmtpConfig, pool: Pool) -> None:
        self._sender = EmailSender(config, pool)

    def check(self, arguments: dict[str, Any]) -> None:
        try:
            validate_send_email(arguments)
        except EmailInvalid as err:
            raise InvalidArguments(str(err)) from err

    async def aclose(self) -> None:
        """Each send opens its own SMTP connection: nothing is kept between calls."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        try:
            return await self._sender.send(
                idempotency_key=context.idempotency_key,
                arguments=arguments,
                turn_id=context.turn_id,
                tool_call_id=context.tool_call_id,
            )
        except EmailInvalid as err:
            raise InvalidArguments(str(err)) from err
        except EmailTransientError as err:
            raise ToolTemporarilyFailed(f"the mail server is unavailable: {err}") from err
        except DeliveryUncertain as err:
            raise ToolFailed(
                "delivery_uncertain",
                "the connection was lost after the message was handed to the mail server; it may or "
                "may not have been delivered, so it was not sent again",
            ) from err
        except EmailPermanentError as err:
            raise ToolFailed("email_rejected", str(err)) from err
