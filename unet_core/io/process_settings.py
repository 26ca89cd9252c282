"""What the storage and DICOMweb calls of a job do in every one of its processes, as one typed
value that travels to the workers inside the job's own settings (SegmentSettings.storage), never
through their environment:

    settings = StorageSettings.of_process()   on the driver: its flags and environment
    settings.apply()                          on a worker, before a stage runs

The environment variables are the driver's defaults, kept for existing deployments:
UNET_STORAGE_RETRIES (6 attempts per storage call), UNET_DICOMWEB_RETRIES (6 per DICOMweb request)
and UNET_PRIVATE_OUTPUTS=1 (what --private-outputs sets: local files 0600).
"""
from __future__ import annotations

from dataclasses import dataclass

from unet_core.errors import ConfigError
from unet_core.io import dicomweb, storage


@dataclass(frozen=True)
class StorageSettings:
    retries: int = 6  # attempts of one storage call (read, write, list, delete), storage.with_retry
    dicomweb_retries: int = 6  # attempts of one DICOMweb request
    private_outputs: bool = False  # local files written 0600 (--private-outputs), else as the umask allows

    def __post_init__(self) -> None:
        if self.retries < 1 or self.dicomweb_retries < 1:
            raise ConfigError(f"storage retries must be >= 1 (got {self.retries} and {self.dicomweb_retries})")

    @classmethod
    def of_process(cls) -> StorageSettings:
        """This process's settings: the environment's, read at import, and --private-outputs."""
        return cls(storage.RETRY_ATTEMPTS, dicomweb.RETRY_ATTEMPTS, storage.private_outputs())

    def apply(self) -> None:
        """Make them this process's (a worker, before it runs a stage of the job they came with)."""
        storage.RETRY_ATTEMPTS = self.retries
        dicomweb.RETRY_ATTEMPTS = self.dicomweb_retries
        storage.PRIVATE_OUTPUTS = self.private_outputs
