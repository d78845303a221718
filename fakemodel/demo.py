"""The default answer of the built-in offline model, used when no script matches."""

from __future__ import annotations

import re

MAX_QUESTION_CHARS = 200

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that could
# open emphasis, code, links, HTML or tables inside the quoted question and leave them unclosed.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~!])")


def quote_question(question: str) -> str:
    """Make the user's text safe to embed as one markdown block-quote line."""
    text = " ".join(question.split())
    if not text:
        return "*(an empty message)*"
    if len(text) > MAX_QUESTION_CHARS:
        cut = text[:MAX_QUESTION_CHARS]
        # Cut at a word boundary when there is one, so no half word dangles.
        cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
        text = cut.rstrip() + " …"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def demo_answer(question: str) -> str:
    """Deterministic markdown answer that explains the offline model and echoes the question."""
    return (
        "Hi! I'm the **built-in offline model** of the assistant. No real LLM is configured, "
        "so I can't really answer yet, but everything around me is working: this reply was "
        "streamed token by token through a durable workflow.\n"
        "\n"
        "You asked:\n"
        "\n"
        f"> {quote_question(question)}\n"
        "\n"
        "Things to try:\n"
        "\n"
        "- **Use a real model:** set `OPENAI_BASE_URL` and `OPENAI_API_KEY` "
        "(any OpenAI-compatible endpoint works) and restart.\n"
        "- **Keep chatting:** the conversation history is stored, so follow-ups see "
        "earlier turns.\n"
        "- **Try an approval:** with SMTP configured, ask me to email someone (an address "
        "in your message); nothing is sent until you approve it.\n"
        "- **Test durability:** stop the worker while an answer is streaming, start it "
        "again, and watch the turn finish.\n"
    )
