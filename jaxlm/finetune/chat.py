"""Chat examples (``messages`` lists) rendered into prompt → completion text.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``;
its last assistant turn is the completion and everything before it, ending with the cue
that an assistant turn starts, the prompt. The rendering is the backbone tokenizer's chat
template where its Hugging Face directory has one (``tokenizer_config.json``
``chat_template``, a Jinja template rendered as ``transformers`` does, with
``add_generation_prompt``), otherwise jaxlm's default:

    <|system|>
    You are terse.
    <|user|>
    Hi!
    <|assistant|>
    Hello.

— each turn ``<|role|>\\n{content}\\n``, the prompt ending with ``<|assistant|>\\n`` (the
completion is then followed by EOS, as every completion). ``jaxlm predict`` on a chat run
renders each input as one user turn the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2.sandbox

from jaxlm.data.errors import DataError

ROLES = ("system", "user", "assistant")
DEFAULT = "default"  # finetune.chat_template: jaxlm's own rendering (above)


def template_of(backbone_path: str | Path | None) -> str:
    """The chat template of a Hugging Face directory's tokenizer, else :data:`DEFAULT`."""
    if backbone_path is None:
        return DEFAULT
    config = Path(backbone_path) / "tokenizer_config.json"
    if not config.is_file():
        return DEFAULT
    try:
        template = json.loads(config.read_text()).get("chat_template")
    except (OSError, ValueError):
        return DEFAULT
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template.strip() else DEFAULT


def _check(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} "
                        f"objects, not {str(messages)[:60]!r}")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: each message needs 'role' and 'content'; got "
                            f"{str(m)[:60]!r}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: unknown role {m['role']!r}; roles are "
                            f"{', '.join(ROLES)}")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation has no assistant turn at its end to learn "
                        "(the last message's role must be 'assistant')")
    return messages


def _default(messages: list[dict[str, str]], cue: bool) -> str:
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return text + ("<|assistant|>\n" if cue else "")


def _jinja(template: str, messages: list[dict[str, str]], cue: bool,
           specials: dict[str, str]) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise DataError(f"the chat template refused a conversation: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=cue,
                                            **specials)


def render(messages: Any, template: str, where: str,
           specials: dict[str, str] | None = None) -> tuple[str, str]:
    """(prompt, completion) text of one conversation (see the module docstring)."""
    messages = _check(messages, where)
    *before, last = messages
    if template == DEFAULT:
        return _default(before, cue=True), last["content"]
    specials = specials or {}
    prompt = _jinja(template, before, True, specials)
    full = _jinja(template, messages, False, specials)
    if not full.startswith(prompt) or not full[len(prompt):].strip():
        raise DataError(f"{where}: the chat template renders no assistant turn after the "
                        "prompt (the conversation rendered whole does not continue the prompt "
                        "rendered with add_generation_prompt); set finetune.chat_template="
                        "default")
    return prompt, full[len(prompt):]


def user_prompt(text: str, template: str, specials: dict[str, str] | None = None) -> str:
    """The prompt of a one-turn conversation: ``text`` as the user's message."""
    turn = [{"role": "user", "content": text}]
    if template == DEFAULT:
        return _default(turn, cue=True)
    return _jinja(template, turn, True, specials or {})
