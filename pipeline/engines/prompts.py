"""Prompt templates: plain Jinja2 files, one per use, in which a value is always data.

    prompt = load_prompt("macvr_textual_tags")           # prompts/macvr_textual_tags.j2
    prompt.render(caption="a man plays guitar")          # the paper's raw text, caption after "1) "
    prompt.as_messages(caption="a man plays guitar")     # the same turn as chat messages
    prompt.sha256                                        # the prompt's identity, for a stage's version

A prompt is the file `NAME.j2` in a prompts folder: by default the repository's `prompts/`, the
folder beside the `pipeline` package (so a source checkout and an editable install both find
it, and a researcher edits a file there and reruns); `folder=` names another. A non-editable
install does not carry `prompts/`: give it a folder.

Rendering promises:
- A value (a caption) is inserted as it is. Jinja2 never renders a value again, so braces,
  `{{ ... }}`, `{% ... %}` or "ignore previous instructions" in a caption reach the model
  verbatim and nothing in them is evaluated. No escaping either (autoescape is off: this is text
  for a model, not HTML).
- A variable the template reads but was not given is an error naming the template and the
  variable (StrictUndefined), never an empty string in the prompt. Values the template does not
  read are ignored, so a stage may pass the same values to every prompt.
- The template runs in Jinja2's sandbox: an edited template cannot reach Python internals.
- The file's final newline is not rendered (`keep_trailing_newline=False`): files end with a
  newline as editors like, and the text a model sees ends where the prompt ends (e.g. right
  after "ASSISTANT:"). `trim_blocks`/`lstrip_blocks` are on, as in Hugging Face chat templates,
  so a `{% if %}` line or the leading `{# comment -#}` leaves no blank line behind.
- A template with a syntax error fails at load time with one line naming the file and line.

`sha256` is of the file's bytes (what `sha256sum prompts/NAME.j2` prints), comments included:
any edit to the file is a new prompt, and so a new version of every stage that uses it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from pipeline.config import ConfigError

SUFFIX = ".j2"
# The repository's prompts/: beside the `pipeline` package in a checkout or an editable install.
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "prompts"  # the checkout's prompts/ (pipeline/engines/..)

# The raw Vicuna-style layout ("SYSTEM USER: ... ASSISTANT:") that as_messages splits.
_USER, _ASSISTANT = "USER:", "ASSISTANT:"
_COMMENT = re.compile(r"\{#.*?#\}", re.S)


class PromptError(ConfigError):
    """A prompt is missing, unreadable, malformed, or was rendered without a value it needs; the
    message names the prompt's file and, where there is one, the line or the variable."""


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


@functools.lru_cache(maxsize=128)
def _compile(text: str, path: str) -> jinja2.Template:
    # Cached on the text, so a Prompt stays a plain picklable record (it can travel to Ray
    # workers) and each worker compiles a template once.
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None


def prompts_folder(folder: str | Path | None = None) -> Path:
    """The prompts folder: `folder` when given, else the repository's `prompts/`. It must exist."""
    path = Path(folder) if folder is not None else DEFAULT_FOLDER
    if not path.is_dir():
        hint = "" if folder is not None else (
            " (the default is the prompts/ folder of the checkout that holds the pipeline package; "
            "name a prompts folder explicitly)")
        raise PromptError(f"prompts folder {path} does not exist{hint}")
    return path


def list_prompts(folder: str | Path | None = None) -> list[str]:
    """The names of the prompts in the folder (each `NAME.j2`), sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in prompts_folder(folder).glob(f"*{SUFFIX}") if p.is_file())


@dataclass(frozen=True)
class Prompt:
    name: str
    path: str  # the file it was read from
    text: str  # the template source, exactly as in the file
    sha256: str  # of the file's bytes: the prompt's identity
    variables: tuple[str, ...]  # the names the template reads, sorted

    def render(self, **values: Any) -> str:
        """The text to send, with each value inserted verbatim as data. A variable the template
        reads but `values` lacks raises PromptError naming this prompt and the variable."""
        try:
            return _compile(self.text, self.path).render(**values)
        except jinja2.UndefinedError as exc:
            given = ", ".join(sorted(values)) or "none"
            raise PromptError(f"prompt {self.name} ({self.path}): {exc.message}; values given: {given}") from None
        except jinja2.TemplateError as exc:
            raise PromptError(f"prompt {self.name} ({self.path}): {exc}") from None

    def as_messages(self, **values: Any) -> list[dict[str, str]]:
        """The same prompt as chat messages, for a model's own chat template instead of the raw text.

        A raw Vicuna-style prompt (its template holds "USER:" and ends with "ASSISTANT:") maps to
        [{"role": "system", "content": <the preamble before "USER:">},
         {"role": "user", "content": <the text between "USER:" and the final "ASSISTANT:">}],
        each stripped of surrounding whitespace; the paragraphs inside keep their blank lines. The
        chat template then supplies the turn markers and the generation prompt that "USER:" and
        "ASSISTANT:" stood for. Any other prompt (a VLM's, which is already the user turn) is one
        user message holding the rendered text; the engine attaches the frames.

        Which layout applies is decided from the template, never from the values, and the
        preamble must be plain text: so a caption holding "USER:" or "ASSISTANT:" stays inside
        the user message verbatim and cannot move the split."""
        text = self.render(**values)
        if not self._is_vicuna():
            return [{"role": "user", "content": text}]
        # The preamble is literal template text without "USER:", so the rendered text's first
        # "USER:" is the template's; the template ends in "ASSISTANT:", so the last one is too.
        system, _, rest = text.partition(_USER)
        user = rest.rstrip()
        if not user.endswith(_ASSISTANT):
            raise PromptError(f"prompt {self.name} ({self.path}): the rendered text does not end with {_ASSISTANT}")
        user = user[: -len(_ASSISTANT)]
        return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]

    def _is_vicuna(self) -> bool:
        source = _COMMENT.sub("", self.text)
        if _USER not in source or not source.rstrip().endswith(_ASSISTANT):
            return False
        preamble = source.split(_USER, 1)[0]
        if "{{" in preamble or "{%" in preamble:
            raise PromptError(f"prompt {self.name} ({self.path}): the text before {_USER} must be plain text "
                              f"for chat messages (it becomes the system message)")
        return True


def load_prompt(name: str, folder: str | Path | None = None) -> Prompt:
    """The prompt `name` (the file `NAME.j2`) from the folder (default: the repository's
    prompts/), compiled, so that a syntax error surfaces here, before any work starts. An unknown
    name is a PromptError listing the prompts that are there."""
    root = prompts_folder(folder)
    available = list_prompts(root)
    if name not in available:
        raise PromptError(f"unknown prompt {name!r} in {root}; available: {', '.join(available) or 'none'}")
    path = root / f"{name}{SUFFIX}"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    _compile(text, str(path))  # raises on a syntax error, naming the file and line
    variables = tuple(sorted(meta.find_undeclared_variables(_ENV.parse(text))))
    return Prompt(name=name, path=str(path), text=text, sha256=hashlib.sha256(data).hexdigest(), variables=variables)


def render_with_chat_template(messages: list[dict[str, str]], model: str) -> str:
    """`messages` through the chat template of `model`'s tokenizer (a Hugging Face id or a local
    folder), as text ending with the generation prompt: what a chat backend will feed the model."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"chat template: cannot load a tokenizer from {model}: {exc}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"chat template: the tokenizer of {model} has no chat template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError as exc:  # e.g. a template that refuses a system message
        raise ConfigError(f"chat template of {model} failed on these messages: {exc}") from None
