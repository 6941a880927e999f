"""Settings of ``medai serve``: one YAML file in the service's root folder, every field defaulted.

The embedded default needs nothing but a folder: the index is ``ROOT/index.sqlite``,
instances go under ``ROOT/archive``, task outputs under ``ROOT/results``, project keys
under ``ROOT/keys``. Every listener binds to 127.0.0.1 unless the file says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medai.errors import ConfigError, validation_summary
from medai.fsutil import atomic_write_text

__all__ = ["CONFIG_FILE", "Destination", "ServiceConfig", "load_config", "save_config"]

CONFIG_FILE = "service.yaml"


class Destination(BaseModel):
    """An archive node that receives the DICOM results: by C-STORE, or by STOW-RS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    protocol: Literal["dimse", "stow"] = "dimse"
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    ae_title: str = Field(default="ARCHIVE", min_length=1, max_length=16)
    url: str | None = None  # STOW-RS base URL (…/dicom-web)
    max_attempts: int = Field(default=5, ge=1)


class ServiceConfig(BaseModel):
    """Everything ``medai serve`` needs; ``root`` is the only required setting."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    dicom_port: int | None = Field(default=11112, ge=0, le=65535)
    ae_title: str = Field(default="MEDAI", min_length=1, max_length=16)
    quiet_seconds: float = Field(default=30.0, ge=0)
    max_upload_mb: float = Field(default=512.0, gt=0)
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=2, ge=1)
    gpus: int = Field(default=0, ge=0)
    memory_gb: float = Field(default=16.0, gt=0)
    ray_address: str | None = None
    poll_seconds: float = Field(default=0.5, gt=0)
    destinations: list[Destination] = Field(default_factory=list)

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: Path) -> Path:
        return root.expanduser().resolve()

    @property
    def url(self) -> str:
        """The database URL: the given one, else SQLite in the root folder."""
        return self.database_url or f"sqlite:///{self.root / 'index.sqlite'}"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; :class:`ConfigError` naming the known ones."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination {name!r} in {CONFIG_FILE} (known: {known})")


def load_config(root: str | Path, **overrides: object) -> ServiceConfig:
    """Read ``ROOT/service.yaml`` if present, apply ``overrides`` (None values skipped).

    Raises:
        ConfigError: A setting that does not validate, named with the fix.
    """
    path = Path(root) / CONFIG_FILE
    values: dict[str, object] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of settings, got {type(loaded).__name__}"
            )
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["root"] = Path(root)
    try:
        return ServiceConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_summary(error)}") from error


def save_config(config: ServiceConfig) -> Path:
    """Write ``config`` (without its root) to ``ROOT/service.yaml`` atomically."""
    document = config.model_dump(mode="json", exclude={"root"})
    path = config.root / CONFIG_FILE
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))
    return path
