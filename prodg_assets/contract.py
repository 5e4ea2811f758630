"""The names more than one module (and the operators' tooling) rely on: run tags, container labels, asset keys,
groups, check names, job/schedule/sensor names, pools and shared metadata keys. Values are stable contracts
(`../DESIGN.md`); change one only with every reader of it.
"""

# -- run tags ----------------------------------------------------------------------------------------------------------
COMMIT_TAG = "prodg/commit"  # the commit a run deploys (set by the git sensor, the schedules and `prodg deploy`)
FORCE_TAG = "prodg/force"  # "true": deploy exactly that commit, even an older one (the break-glass rollback)
COVERS_TAG = "prodg/covers"  # the commits (12 hex) a sensor run covers, newest first
REASON_TAG = "prodg/reason"  # why the sensor selected what it did
KIND_TAG = "prodg/kind"  # what launched a run (values below)
CAPTURE_LATE_TAG = "prodg/capture-late"  # "true": a backup of a day that is over captures now, marked captured_late
REMAINDER_TAG = "prodg/remainder-of"  # the failed deploy run whose undeployed rest this run deploys
SERVICE_TAG = "prodg/service"  # asset tag: the Compose service an asset deploys
TARGET_TAG = "prodg/target"  # asset tag: the backup target an asset backs up
PARTITION_TAG = "dagster/partition"  # Dagster's own: a partitioned run's day
RUN_KEY_TAG = "dagster/run_key"  # Dagster's own: a sensor run's run key (what the daemon checks for reuse)
SENSOR_NAME_TAG = "dagster/sensor_name"  # Dagster's own: the sensor that launched a run
ROTATED_TAG = "prodg/rotated"  # a rotation run: the secrets (names, comma-separated) whose value changed at the source

BACKUP_KIND = "backup"
DRILL_KIND = "drill"  # the rotating restore drill's runs
DRIFT_KIND = "drift"
CHECKS_KIND = "checks"  # a check schedule's run (prodg.yaml watch.every): checks only, nothing deployed
SELF_HEAL_KIND = "self_heal"
ROTATION_KIND = "rotation"  # a secret changed at its source, the commit did not: its services recreated
MANUAL_DEPLOY_KIND = "manual_deploy"

# -- container labels --------------------------------------------------------------------------------------------------
LABEL_PROJECT = "prodg.project"
LABEL_SERVICE = "prodg.service"
LABEL_SPEC_HASH = "prodg.spec-hash"
LABEL_COMMIT = "prodg.commit"
LABEL_IMAGE_DIGEST = "prodg.image.digest"  # the registry digest the image was pulled as ("" for a local one)
LABEL_NETWORK = "prodg.network"
LABEL_HELPER = "prodg.helper"  # a helper container's job ("pg_dumpall of postgres"); removed when it is done
LABEL_SCRATCH = "prodg.scratch"  # scratch containers of restores ("restore": a drill's, "manual": `prodg restore`)

# -- asset keys and groups ---------------------------------------------------------------------------------------------
HOST_ASSET = "host_baseline"
NETWORK_ASSET = "docker_network"
RETIRED_ASSET = "retired_services"
SECRETS_ASSET = "secrets_env"
DNS_ASSET = "dns_records"
TLS_ASSET = "tls_certificates"
TAILNET_ASSET = "tailnet"
POSTGRES_BACKUP = "postgres_backup"
DAGSTER_BACKUP = "dagster_backup"  # Dagster's own database (method dagster_storage)
MINIO_BACKUP = "minio_backup"
CONFIG_BACKUP = "config_backup"
RESTORE_DRILL = "postgres_restore_drill"
BACKUP_AUDIT = "backup_audit"
BACKUP_GROUP = "backups"
# backup method (prodg.yaml backups.targets.*.method) → its one target's asset; any other method (volume,
# secrets_file) names its asset after the target: `<target>_backup`
ASSET_OF_METHOD = {"pg_dumpall": POSTGRES_BACKUP, "s3_mirror": MINIO_BACKUP, "config_archive": CONFIG_BACKUP,
                   "dagster_storage": DAGSTER_BACKUP}

# -- asset checks ------------------------------------------------------------------------------------------------------
IN_SYNC = "in_sync"
HOST_CONFORMS = "host_conforms"  # OS, kernel, UFW: reported, never blocking
HOST_SAFE_TO_DEPLOY = "host_safe_to_deploy"  # free disk: the one host condition that blocks deploys
EXPOSURE = "exposure"
ROOT_BELOW_T1 = "no_root_below_t1"  # no T2/T3 service's container runs as root (exposure family)
TAILNET_POLICY_CHECK = "tailnet_policy"  # Headscale's live policy is the one prodg writes (exposure family)
HEALTHY = "healthy"  # per service: its container running, and healthy by its own healthcheck when it has one
SECRETS_CHECK = "secrets_complete_and_private"
TLS_CHECK = "certificates_valid"
DNS_CHECK = "dns_only_and_pointing_at_host"
OBJECT_INTACT = "object_intact"
NO_MISSING_DAYS = "no_missing_days"
FRESH = "fresh"
AUDIT_CLEAN = "audit_clean"
RESTORED = "restored"  # per target and day: the day's backup restored into scratch and verified (the rotating drill)

# -- jobs, schedules, sensors ------------------------------------------------------------------------------------------
BACKUP_JOB = "backup_job"
AUDIT_JOB = "backup_audit_job"
BACKUP_SCHEDULE = "backup_schedule"
DRILL_JOB = "restore_drill_job"
DRILL_SCHEDULE = "restore_drill_rotation"  # each night one target and one day of its window, restored and verified
DRIFT_SCHEDULE = "drift_schedule"
SENSOR_NAME = "config_repo_sensor"
ROTATION_SENSOR = "secret_rotation_sensor"
DEPLOY_FAILURE_NOTIFIER = "deploy_failure_notifier"
BACKUP_SUCCESS_NOTIFIER = "backup_success_notifier"
DRILL_NOTIFIER = "restore_drill_notifier"
BACKUP_FAILURE_NOTIFIER = "backup_failure_notifier"
CHECK_NOTIFIER = "check_notifier"
BACKUP_MISSED_SENSOR = "backup_missed_sensor"
CHECK_SCHEDULE_PREFIX = "checks_every_"  # + a family: checks_every_health, …
WATCHED_TAG = "prodg/watched"  # a check schedule's run: the family it re-checks

# Families of checks re-run on a clock without deploying anything (prodg.yaml watch.every); `in_sync` is the drift
# schedule's (deploy.drift_schedule). "health" also takes each service's own probe (layers/service_checks.PROBES).
CHECK_FAMILIES = {
    "health": (HEALTHY,),
    "exposure": (EXPOSURE, ROOT_BELOW_T1, TAILNET_POLICY_CHECK),
    "secrets": (SECRETS_CHECK,),
    "host": (HOST_CONFORMS, HOST_SAFE_TO_DEPLOY),
    "tls": (TLS_CHECK,),
    "dns": (DNS_CHECK,),
}

# -- notification events (prodg.yaml notifications.telegram.on) --------------------------------------------------------
DEPLOY_FAILURE = "deploy_failure"
BACKUP_SUCCESS = "backup_success"
BACKUP_FAILURE = "backup_failure"
CHECK = "check"  # a watched check turned red, changed, stayed red (a reminder), flapped, or turned green
BACKUP_MISSED = "backup_missed"  # by watch.backups_due_by, a target's yesterday is missing or failed

# -- metadata keys read by more than one module ------------------------------------------------------------------------
META_COMMIT = "commit"
META_ACTION = "action"
META_OBJECT_KEY = "object_key"
META_SHA256 = "sha256"
META_MANIFEST_KEY = "manifest_key"
META_MANIFEST_SHA256 = "manifest_sha256"
META_CAPTURED_AT = "captured_at"
META_BYTES = "bytes"
META_ROW_COUNTS = "row_counts"
META_COMMITS_COVERED = "commits_covered"


def service_pool(asset: str) -> str:
    """The concurrency pool of a service's asset: deploys, checks and backups of one service never overlap."""
    return f"prodg_service_{asset}"
