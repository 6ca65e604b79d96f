"""Configuration: YAML run files -> frozen config dataclasses, with every problem reported.

Entry points::

    @dataclass(frozen=True)
    class TrainLmConfig: ...

    def main(config: TrainLmConfig) -> None: ...

    if __name__ == "__main__":
        lm.config.main(main)()          # parses sys.argv[1:]; tests pass args=[...]

API:
    main(fn)(args=None)                  parse argv into fn's config class, call fn; on a config
                                         problem print it to stderr and exit 2; warnings from
                                         parsing (deprecated fields) print as `warning: ...`;
                                         --help prints the field tree.
    parse(cls, config_path=None, args=()) -> cls       raises ConfigError
    load_yaml(path_or_url) -> dict       PyYAML safe load + `!include` + `base:`
    decode(cls, data, *, path="") -> cls                type-directed, raises ConfigError
    to_yaml(cfg) -> str, save_config(cfg, path_or_url), to_flat_dict(cfg) -> {dotted: scalar}
    format_help(cls) -> str
    ConfigError(problems, source)        .problems: list[ConfigProblem(path, message, location)]

Validating in `__post_init__` (every config area does this): raise `ValueError`/`TypeError`
and the decoder reports it at the dataclass's YAML path; raise `invalid(...)` (a
`FieldError`, itself a `ValueError`) to report it at the field's path instead::

    def __post_init__(self):
        if self.warmup < 0:
            raise lm.config.invalid("warmup", self.warmup, "a step count >= 0 or a fraction")
        if self.cycles is not None and self.cycle_length is not None:
            raise lm.config.FieldError("cycles", "can't use both cycle_length and cycles")

which a user sees as `optimizer.warmup: got -3, expected a step count >= 0 or a fraction`.
Several problems from one `__post_init__` can be raised together as
`ConfigError([ConfigProblem("field", "message"), ...])` (paths relative to the dataclass).

Importing this package registers draccus codecs for `datetime.timedelta` ("15m", "1h30m"),
`jmp.Policy` ("p=f32,c=bfloat16") and `pathlib.Path`; that is its only side effect.
"""

from lm.config import codecs as _codecs
from lm.config.cli import main, parse
from lm.config.codecs import format_duration, format_policy, parse_duration, parse_policy
from lm.config.decoding import decode, fields_set
from lm.config.encoding import save_config, to_data, to_flat_dict, to_yaml
from lm.config.errors import (
    ConfigError,
    ConfigProblem,
    ConfigProblems,
    FieldError,
    SetupConfigError,
    field_problem,
    invalid,
    raise_problems,
)
from lm.config.helptext import format_help
from lm.config.loading import deep_merge, load_document, load_yaml, resolve_relative

_codecs.register()

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "ConfigProblems",
    "FieldError",
    "SetupConfigError",
    "decode",
    "deep_merge",
    "field_problem",
    "fields_set",
    "format_duration",
    "format_help",
    "format_policy",
    "invalid",
    "load_document",
    "load_yaml",
    "main",
    "parse",
    "parse_duration",
    "parse_policy",
    "raise_problems",
    "resolve_relative",
    "save_config",
    "to_data",
    "to_flat_dict",
    "to_yaml",
]
