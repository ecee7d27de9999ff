"""Sync jobs as they travel over SQS, and running one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from mailsync import dal
from mailsync.observability import logger


class SyncJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenant_id: str
    user_id: str
    reason: str = "schedule"


def parse_job(body: str) -> SyncJob:
    return SyncJob.model_validate_json(body)


def run_job(job: SyncJob) -> None:
    """Sync one account. The engine itself is the "Sync engine" issue; this only skips gone accounts."""
    account = dal.get_account(job.tenant_id, job.user_id)
    if account is None:
        logger.info("sync job for an account without settings; dropped", extra={"user_id": job.user_id})
        return
    logger.info("sync job received", extra={"tenant_id": job.tenant_id, "user_id": job.user_id})
