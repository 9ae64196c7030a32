"""The README's variables table lists every setting of every process (pure check: no services)."""

from pathlib import Path

import pytest

from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings
from ml.settings import ModelSettings, TrainSettings
from server.settings import ServerSettings
from workers.settings import WorkerSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CLASSES = [
    Neo4jSettings,
    LocalStackSettings,
    GraphSettings,
    DataSettings,
    ServerSettings,
    ModelSettings,
    TrainSettings,
    WorkerSettings,
]


def env_names(cls) -> list[str]:
    """The variable each field reads: its alias when it has one (the one width setting), else prefix + name."""
    prefix = cls.model_config.get("env_prefix", "")
    out = []
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        out.append(alias.choices[0].upper() if alias is not None else (prefix + name).upper())
    return out


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_in_the_readme_table(cls):
    missing = [n for n in env_names(cls) if f"| `{n}` |" not in README]
    assert not missing, f"README variables table lacks {missing}"
