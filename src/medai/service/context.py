"""The running service's shared parts: settings, index, archive — opened once per process."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from medai.service.archive import Archive
from medai.service.config import ServiceConfig
from medai.service.db import make_engine
from medai.service.migrate import upgrade

__all__ = ["ServiceContext", "open_context"]


@dataclass
class ServiceContext:
    """What every part of ``medai serve`` (API, DICOM listener, dispatcher) works with."""

    config: ServiceConfig
    engine: Engine
    factory: sessionmaker[Session]
    archive: Archive

    def close(self) -> None:
        self.engine.dispose()


def open_context(config: ServiceConfig) -> ServiceContext:
    """Create the root's folders, bring the index's schema up to date, open the archive."""
    for folder in (config.root, config.archive, config.results):
        folder.mkdir(parents=True, exist_ok=True)
    config.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(config.url)
    upgrade(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    archive = Archive(config.archive, factory, keys=config.keys)
    return ServiceContext(config, engine, factory, archive)
