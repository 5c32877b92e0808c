"""Settings: one declarative table feeds the command line, the environment and `-h`.

Bottom up, each module knowing only those before it: `values.py` turns a text into a typed
value (one parser per kind), `table.py` holds the rows (one per flag: name, default,
parser, help line), `config.py` the frozen, typed `Config` (one field per row, checked
against the table on import), `parsing.py` reads flags over `GOGETA_*` variables over
defaults and says what is wrong (`SettingError`, `-h`, `-version`). The rest of gogeta
imports the package, never its modules: `import settings`, `settings.parse(argv)`.
The package sits at the bottom of the layers: it imports nothing of gogeta but `errors`.
"""

from settings.config import Config
from settings.parsing import (
    OTHER_VARIABLES,
    SettingError,
    parse,
    parse_or_exit,
    unknown_variable_warnings,
    usage,
    version,
)
from settings.table import BY_NAME, HERE, NO_WAKE_USER_AGENTS, SETTINGS, TEMPLATES, Setting
from settings.values import Network

__all__ = [
    "BY_NAME",
    "HERE",
    "NO_WAKE_USER_AGENTS",
    "OTHER_VARIABLES",
    "SETTINGS",
    "TEMPLATES",
    "Config",
    "Network",
    "Setting",
    "SettingError",
    "parse",
    "parse_or_exit",
    "unknown_variable_warnings",
    "usage",
    "version",
]
