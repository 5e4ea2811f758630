"""Two deploy runs — an older and a newer commit, tagged the way the git sensor tags them — and a Postgres backup,
started at once in three processes on one Dagster instance with the shipped pools (docker/dev/dagster.yaml): applies
to one service never interleave, the final live state equals the newest commit (an older run that comes second is
superseded, not applied), and the backup partition is intact (its sha256 matches, its dump holds the rows)."""

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import boto3
import dagster as dg
import pytest
import zstandard

from prodg_assets.engine.client import DockerEngine
from prodg_assets.gitops.repo import ConfigRepo
from prodg_assets.secret_source import parse_env_file
from tests.conftest import ROOT, make_testbed
from tests.standins.moto import MotoServer

pytestmark = pytest.mark.docker

BUCKET = "prodg-concurrency"
STORE_KEY_ID, STORE_SECRET = "AKIDCONCURRENCY", "concurrency-store-secret"
# daily partitions end with the last complete day
TODAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()
# What the git sensor's run request executes, in its own process (as the daemon would launch it).
RUNNER = r"""
import json, sys
import dagster as dg
import prodg_assets
selection, tags, partition = sys.argv[1].split(","), json.loads(sys.argv[2]), sys.argv[3] or None
job = prodg_assets.build_defs().resolve_implicit_global_asset_job_def().get_subset(
    asset_selection={dg.AssetKey(s) for s in selection})
with dg.DagsterInstance.get() as instance:
    result = job.execute_in_process(instance=instance, tags=tags, partition_key=partition, raise_on_error=False)
print("run", result.run_id, "succeeded" if result.success else "FAILED")
sys.exit(0 if result.success else 1)
"""


def launch(env: dict, selection: str, tags: dict, partition: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, selection, json.dumps(tags), partition],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_id_of(output: str) -> str:
    return re.search(r"^run (\S+) (?:succeeded|FAILED)$", output, re.M).group(1)


def step_window(instance, run_id: str, step: str) -> tuple[float, float]:
    logs = [r for r in instance.all_logs(run_id) if r.dagster_event and r.dagster_event.step_key == step]
    start = next(r.timestamp for r in logs if r.dagster_event.event_type_value == "STEP_START")
    end = next(r.timestamp for r in logs if r.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"))
    return start, end


def action_of(instance, run_id: str, asset: str) -> str:
    for r in instance.all_logs(run_id):
        event = r.dagster_event
        if event and event.event_type_value == "ASSET_MATERIALIZATION" and event.asset_key == dg.AssetKey(asset):
            return event.materialization.metadata["action"].value
    return ""


@pytest.mark.fault(
    fault="two deploys (older and newer commit) and a backup launched at once, three processes",
    happens="applies to one service never overlap (per-service pools; the backup shares Postgres's); the final live "
            "state is the newest commit (an older run that comes second records `superseded`); the backup "
            "partition's sha256 matches and its dump holds all 5,000 rows")
def test_two_deploys_and_a_backup_at_once_end_at_the_newest_commit_with_an_intact_backup(tmp_path, docker_client,
                                                                                         measured):
    bed = make_testbed(str(tmp_path / "bed"), docker_client, f"prodgc{uuid.uuid4().hex[:8]}")
    with MotoServer(keys={STORE_KEY_ID: STORE_SECRET}) as s3:  # the store answers only its own key
        client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=STORE_KEY_ID,
                              aws_secret_access_key=STORE_SECRET)
        client.create_bucket(Bucket=BUCKET)
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(f"{ROOT}/docker/dev/dagster.yaml", home / "dagster.yaml")
        env = {**bed.env, "DAGSTER_HOME": str(home), "PRODG_TEST_STORE_KEY_ID": STORE_KEY_ID,
               "PRODG_TEST_STORE_SECRET": STORE_SECRET}
        old_env = dict(os.environ)
        os.environ.update(env)
        bed.cleanup()
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert bed.materialize(instance=instance).success  # the test stack, before backups are configured
        bed.add_postgres_backups(BUCKET, s3.url, TODAY)
        env["PRODG_BACKUP_IDENTITY"] = bed.env["PRODG_BACKUP_IDENTITY"]  # the backup signs its manifest with it
        try:
            pg = bed.containers()["postgres"]
            code, out = pg.exec_run(["psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-c",
                                     "create table concurrency_rows as select g as id, md5(g::text) as v "
                                     "from generate_series(1, 5000) g"], user="postgres")
            assert code == 0, out

            for anchor in ("      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}\n",
                           "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n"):
                bed.edit("compose/docker-compose.yml", anchor, f'{anchor}      CONC_ROUND: "1"\n')
            shas = [bed.commit("postgres + redis: round 1")]
            with open(bed.compose) as fh:
                text = fh.read()
            with open(bed.compose, "w") as fh:
                fh.write(text.replace('CONC_ROUND: "1"', 'CONC_ROUND: "2"'))
            shas.append(bed.commit("postgres + redis: round 2"))
            older, newer = shas
            assert open(bed.compose).read().count('CONC_ROUND: "2"') == 2

            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.get_runs()  # storage exists before three processes open it
            # Launched 0.5 s apart (each run then spends seconds on its first steps, so all three still contend for
            # the pools): on the embedded SQLite storage Dagster's slot claim is not atomic, and two steps claiming
            # one pool within milliseconds can both get its single slot (sql_event_log.claim_concurrency_slot reads
            # the free slots before it assigns, and SELECT … FOR UPDATE SKIP LOCKED is a no-op in SQLite; seen once
            # in a full run, 6 ms apart). Postgres storage — the production deployment's — claims exactly.
            # The newer commit first: the older one then comes second, and must be superseded.
            procs = {}
            for name, selection, tags, partition in (
                    ("newer", "postgres,redis", {"prodg/commit": newer, "prodg/reason": "push"}, ""),
                    ("older", "postgres,redis", {"prodg/commit": older, "prodg/reason": "push"}, ""),
                    ("backup", "postgres_backup", {"prodg/commit": newer, "prodg/kind": "backup",
                                                    "prodg/capture-late": "true"}, TODAY)):  # past midnight too
                procs[name] = launch(env, selection, tags, partition)
                time.sleep(0.5)
            outputs = {k: p.communicate(timeout=420)[0] for k, p in procs.items()}
            assert all(p.returncode == 0 for p in procs.values()), {k: o[-2500:] for k, o in outputs.items()}
            run_ids = {k: run_id_of(o) for k, o in outputs.items()}

            with dg.DagsterInstance.from_config(str(home)) as instance:
                # applies to one service never interleave (the backup holds Postgres's pool too)
                for service, runs in (("postgres", ("older", "newer", "backup")), ("redis", ("older", "newer"))):
                    windows = sorted(step_window(instance, run_ids[r], "postgres_backup" if r == "backup"
                                                 else service) for r in runs)
                    for (_, end), (start, _) in zip(windows, windows[1:]):
                        assert end <= start, f"{service}: steps overlapped: {windows}"
                actions = {(r, s): action_of(instance, run_ids[r], s) for r in ("older", "newer")
                           for s in ("postgres", "redis")}
                steps = {(r, s): step_window(instance, run_ids[r], s) for r in ("older", "newer")
                         for s in ("postgres", "redis")}

            # the final live state is the newest commit's
            live = bed.containers()
            for service in ("postgres", "redis"):
                assert 'CONC_ROUND=2' in live[service].attrs["Config"]["Env"], (service, actions)
            repo = ConfigRepo(repo_path=bed.repo, config_subdir="config", branch="main")
            with open(bed.env["PRODG_SECRETS_FILE"]) as fh:
                secrets = parse_env_file(fh.read())
            plan = DockerEngine().plan(repo.desired_state(newer), secrets, newer)
            assert {s: plan.for_service(s).kind for s in ("postgres", "redis")} == {"postgres": "unchanged",
                                                                                    "redis": "unchanged"}
            for service in ("postgres", "redis"):
                # which run's step got the service's pool first is the Engine's and the daemon's to decide; given the
                # order they ran in, one outcome: the older commit's apply after the newer's is superseded (never
                # applied over it), before it is applied and then replaced
                older_second = steps[("older", service)][0] >= steps[("newer", service)][1]
                assert actions[("older", service)] == ("superseded" if older_second else "recreated"), (actions, steps)
                assert actions[("newer", service)] == "recreated", actions

            # the backup partition is intact
            objects = client.list_objects_v2(Bucket=BUCKET, Prefix=f"postgres/{TODAY}/").get("Contents", [])
            dumps = [o["Key"] for o in objects if o["Key"].endswith(".sql.zst.age")]
            assert len(dumps) == 1, objects
            data = client.get_object(Bucket=BUCKET, Key=dumps[0])["Body"].read()
            manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"postgres/{TODAY}/manifest.json")["Body"]
                                  .read())
            assert manifest["objects"][0]["sha256"] == hashlib.sha256(data).hexdigest()
            plain = subprocess.run(["age", "--decrypt", "-i", bed.env["PRODG_BACKUP_IDENTITY"]], input=data,
                                   capture_output=True, check=True).stdout
            sql = zstandard.ZstdDecompressor().decompressobj().decompress(plain)
            assert b"CREATE TABLE public.concurrency_rows" in sql
            copy = sql.split(b"COPY public.concurrency_rows", 1)[1].split(b"\n\\.\n", 1)[0]
            assert copy.count(b"\n") == 5000
            written = {"public.concurrency_rows": 5000}  # the rows Postgres held before the runs contended
            lost = measured.compare("rows in the backup", expected=written,
                                    actual={"public.concurrency_rows": copy.count(b"\n")})
            assert lost == 0

            # the older commit, launched again the way the sensor would, changes nothing now
            before = {s: c.id for s, c in bed.containers().items()}
            again = launch(env, "postgres,redis", {"prodg/commit": older, "prodg/reason": "push"})
            out = again.communicate(timeout=300)[0]
            assert again.returncode == 0, out[-2500:]
            with dg.DagsterInstance.from_config(str(home)) as instance:
                run_id = run_id_of(out)
                again_actions = {action_of(instance, run_id, s) for s in ("postgres", "redis")}
            # the contention gone, the same deploy re-run converges: nothing to apply, the newest commit stays live
            assert measured.retried(converged=again.returncode == 0 and again_actions == {"superseded"}
                                    and {s: c.id for s, c in bed.containers().items()} == before), again_actions
            # and the live Postgres still holds every row it held before the runs contended (it was swapped twice)
            code, out = bed.containers()["postgres"].exec_run(
                ["psql", "-X", "-At", "-U", "postgres", "-c", "select count(*) from concurrency_rows"], user="postgres")
            assert code == 0, out
            lost = measured.compare("rows", expected=written,
                                    actual={"public.concurrency_rows": int(out.decode().strip())})
            assert lost == 0
        finally:
            bed.cleanup()
            os.environ.clear()
            os.environ.update(old_env)
