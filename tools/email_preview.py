"""What approving a `send_email` call will send, for the people deciding: the same parsing and
the same HTML/plain-text derivation as the message that goes out, without building it."""

from typing import Any

from pydantic import BaseModel, Field

from tools.email_message import EmailInvalid, body_parts, parse_send_email


class AttachmentPreview(BaseModel):
    filename: str
    content_type: str
    size: int


class EmailPreview(BaseModel):
    from_: str | None = Field(serialization_alias="from")  # the SMTP_FROM configured, if any
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: str | None
    subject: str
    html: str
    text: str
    attachments: list[AttachmentPreview]


def email_preview(arguments: dict[str, Any], *, sender: str | None) -> EmailPreview | None:
    """The message these arguments make, or None when they would be refused when sent."""
    try:
        request = parse_send_email(arguments)
    except EmailInvalid:
        return None
    text, html = body_parts(request.body)
    return EmailPreview(
        from_=sender,
        to=[str(address) for address in request.to],
        cc=[str(address) for address in request.cc],
        bcc=[str(address) for address in request.bcc],
        reply_to=str(request.reply_to) if request.reply_to else None,
        subject=request.subject,
        html=html,
        text=text,
        attachments=[
            AttachmentPreview(
                filename=item.filename, content_type=f"{item.maintype}/{item.subtype}", size=len(item.data)
            )
            for item in request.attachments
        ],
    )
