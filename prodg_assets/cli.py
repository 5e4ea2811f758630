"""`prodg`: the operator's command line. Errors are printed as `file:line: field: message`, never as tracebacks."""

from __future__ import annotations

import argparse
import os
import sys

from .desired import ConfigInvalid, DirTree, load_desired_state, validate


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("PRODG_CONFIG_DIR") or "config"


def cmd_validate(args: argparse.Namespace) -> int:
    path = _config_path(args.path)
    if not os.path.isdir(path):
        print(f"{path}: not a folder", file=sys.stderr)
        return 1
    errors = validate(DirTree(path), os.environ)
    for error in errors:
        print(error)
    if errors:
        print(f"{len(errors)} error(s) in {path}", file=sys.stderr)
        return 1
    print(f"{path}: valid")
    return 0


def git_rev(repo: str, rev: str) -> str:
    from .gitops.repo import git

    return git(repo, "rev-parse", f"{rev}^{{commit}}").decode().strip()


def _state(args: argparse.Namespace):
    """(desired state, commit, resources) for the config folder, or for --commit (default: the tracked branch's
    head) of the config repo — a work tree, or the local mirror of PRODG_REPO_URL (fetched first), which has none."""
    from . import build_resources, config_repo
    from .settings import EnvSettings

    env = EnvSettings.from_env(os.environ)
    if getattr(args, "path", None):
        state = load_desired_state(DirTree(args.path), os.environ)
        return state, "", build_resources(state, env)
    repo = config_repo(env)
    repo.fetch()  # a no-op without PRODG_REPO_URL
    commit = ""
    if repo.is_git():  # what a deploy of that commit would do
        commit = git_rev(repo.path, args.commit) if getattr(args, "commit", None) else repo.head()
        state = repo.desired_state(commit)
    else:
        state = load_desired_state(DirTree(os.path.join(env.repo, env.config_subdir)), os.environ)
    return state, commit, build_resources(state, env)


def cmd_plan(args: argparse.Namespace) -> int:
    state, commit, resources = _state(args)
    docker = resources["docker"]
    served = docker.served_digests(state.services.values())  # once per image, for the plan and the list below
    plan = docker.plan(state, resources["secrets"].values(), commit, served=served)
    print(plan.table())
    print("\nIMAGE (digest its registry serves now; a drifted one is in the table above)")
    for name, spec in sorted(state.services.items()):
        digest = "built at deploy" if spec.build else served[name] or \
            f"no digest: not in {docker.registry_mirror or 'its registry'}, or it did not answer"
        print(f"  {name:<14} {spec.image}  {digest}")
    changes = plan.changes
    print(f"\n{len(changes)} change(s), {len(plan.actions) - len(changes)} unchanged or reported; nothing was applied")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Materialise the deploy assets at a commit in the Dagster instance of DAGSTER_HOME, tagged like a sensor run,
    so it shows in the UI's lineage. `--commit <older sha>` is the break-glass rollback."""
    import dagster as dg

    from . import build_defs
    from .contract import BACKUP_GROUP, COMMIT_TAG, FORCE_TAG, KIND_TAG, MANUAL_DEPLOY_KIND

    defs = build_defs()
    repo = defs.resources["repo"]
    commit = git_rev(repo.path, args.commit) if args.commit else repo.head()
    repo.desired_state(commit)  # refuse an invalid commit before anything runs
    job = defs.resolve_implicit_global_asset_job_def()
    keys = {k for k in defs.resolve_asset_graph().get_all_asset_keys()}
    graph = defs.resolve_asset_graph()
    selection = {k for k in keys if graph.get(k).group_name != BACKUP_GROUP}
    if args.select:
        wanted = {dg.AssetKey(s.strip()) for s in args.select.split(",")}
        unknown = wanted - keys
        if unknown:
            print(f"prodg deploy: unknown assets: {', '.join(k.to_user_string() for k in unknown)}", file=sys.stderr)
            return 1
        selection = wanted
    with dg.DagsterInstance.get() as instance:
        result = job.get_subset(asset_selection=selection).execute_in_process(
            instance=instance, tags={COMMIT_TAG: commit, KIND_TAG: MANUAL_DEPLOY_KIND,
                                     **({FORCE_TAG: "true"} if args.commit else {})}, raise_on_error=False)
    print(f"run {result.run_id}: {'succeeded' if result.success else 'FAILED'} deploying {commit[:12]}")
    return 0 if result.success else 1


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a target's backup of a day (backups/restore/commands.py says where each goes), or list what the store
    holds (--list). The identity file is --identity, else PRODG_BACKUP_IDENTITY."""
    import datetime

    from .backups.restore.commands import RESTORE_FAILURES, list_backups, restore
    from .settings import EnvSettings

    state, commit, resources = _state(argparse.Namespace(path=None, commit=None))
    try:
        if args.list:
            store = resources["backup_store"].process_config_and_initialize()
            if not list_backups(state, store):
                print(f"prodg restore: no backups in {store.bucket}", file=sys.stderr)
            return 0
        identity = args.identity or EnvSettings.from_env(os.environ).backup_identity
        if args.files:
            if args.what or args.to or not args.date:
                print("prodg restore --files: give --date and no target or --to (each goes where it belongs)",
                      file=sys.stderr)
                return 2
            return _restore_files(state, commit, resources, datetime.date.fromisoformat(args.date), args.force,
                                  identity)
        if not args.what or not args.date:
            print("prodg restore: give a target and --date (or --list)", file=sys.stderr)
            return 2
        print(restore(state, commit, resources, args.what, datetime.date.fromisoformat(args.date), to=args.to or "",
                      force=args.force, pg_container=args.target or "", only=args.only or "",
                      identity_file=identity))
    except RESTORE_FAILURES as exc:
        print(f"prodg restore: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_backup_signer(args: argparse.Namespace) -> int:
    """Print the key this host signs its backup manifests with (derived from its age identity), as prodg.yaml's
    `backups.signers` lists it: what an operator restoring without this host trusts."""
    from .backups.format.signing import SigningError, host_signer
    from .settings import EnvSettings

    try:
        print(host_signer(args.identity or EnvSettings.from_env(os.environ).backup_identity).text)
    except SigningError as exc:
        print(f"prodg backup-signer: {exc}", file=sys.stderr)
        return 1
    return 0


def _restore_files(state, commit: str, resources: dict, day, force: bool, identity: str) -> int:
    """`prodg restore --files`: the secrets file, then every service's data folder; stops at the first failure."""
    from .backups.restore.commands import RESTORE_FAILURES, file_targets, restore

    for name in file_targets(state):
        try:
            done = restore(state, commit, resources, name, day, force=force, identity_file=identity)
        except RESTORE_FAILURES as exc:
            print(f"prodg restore --files: {name} failed, the targets after it were not restored: {exc}",
                  file=sys.stderr)
            return 1
        print(f"{name}: {done}", flush=True)
    return 0


def cmd_demo_secrets(args: argparse.Namespace) -> int:
    import secrets as pysecrets

    state = load_desired_state(DirTree(_config_path(args.path)), os.environ)
    for key, decl in sorted(state.settings.secrets.required.items()):
        value = pysecrets.token_urlsafe(24)
        if decl.format == "bcrypt":  # the hash of a random password (printed beside it, for the demo's console)
            import bcrypt

            print(f"# {key}: the hash of the password {value}")
            value = bcrypt.hashpw(value.encode(), bcrypt.gensalt(rounds=12)).decode()
        print(f"{key}={value}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    """Where each service's image comes from: built at deploy, on the Engine, or in its registry (or the registry
    mirror) with the digest a pull would get; a service whose image is nowhere is listed, never faked."""
    from .engine.client import DockerEngine
    from .engine.failures import ImageUnavailable
    from .engine.images import image_digest, registry_digest
    from .settings import EnvSettings

    state = load_desired_state(DirTree(_config_path(args.path)), os.environ)
    mirror = EnvSettings.from_env(os.environ).registry_mirror
    docker = DockerEngine(registry_mirror=mirror)  # docker.from_env(): DOCKER_HOST and its TLS settings
    missing = []
    for name, spec in sorted(state.services.items()):
        if spec.build:
            how = f"built from {spec.build.context} at deploy"
        elif docker.image_id(spec.image):
            digest = image_digest(docker.client, spec.image, spec.image, mirror)
            how = f"{spec.image}: on the Engine" + (f" ({digest})" if digest else " (never pulled)")
        else:
            try:
                digest = registry_digest(docker.client, spec.image, mirror)
                how = f"{spec.image}: in {mirror or 'its registry'} as {digest}"
            except ImageUnavailable:
                how = f"{spec.image}: cannot run here: not on the Engine and not in {mirror or 'its registry'}"
                missing.append(name)
        print(f"  {name:<14} {how}")
    if missing:
        print(f"prodg: {len(missing)} service(s) will fail when materialised (their image is nowhere to pull from), "
              f"not be faked: {', '.join(missing)}")
    return 0


def _dagster_url(args: argparse.Namespace) -> str:
    url = args.dagster_url or os.environ.get("PRODG_DAGSTER_URL", "")
    if not url:
        raise ValueError("no Dagster webserver to ask: set PRODG_DAGSTER_URL or pass --dagster-url")
    return url


def cmd_notify_push(args: argparse.Namespace) -> int:
    """The branch moved (a post-receive hook): evaluate the git sensor now and launch the run it asks for."""
    from .gitops.push import PushError, deploy_now

    try:
        print(f"prodg: {deploy_now(_dagster_url(args), args.location)}")
    except PushError as exc:
        print(f"prodg notify-push: {exc}; the sensor's next tick deploys it", file=sys.stderr)
        return 1
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    """Receive a forge's push webhooks (or a hook's POST) and evaluate the git sensor at once."""
    import logging

    from .gitops.webhook import serve
    from .listener import Limits
    from .settings import EnvSettings, listener_settings

    host, port = _listen_address(args.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(host, port, os.environ.get("PRODG_WEBHOOK_SECRET", ""), EnvSettings.from_env(os.environ).branch,
          _dagster_url(args), args.location, Limits(**listener_settings(os.environ)),
          infisical_secret=os.environ.get("PRODG_INFISICAL_WEBHOOK_SECRET", ""))
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    """Serve prodg's metrics for Prometheus, read from the Dagster instance of DAGSTER_HOME (not the daemon)."""
    import logging

    import dagster as dg

    from . import build_defs
    from .listener import Limits
    from .settings import listener_settings
    from .watch.metrics import graph_of, serve

    host, port = _listen_address(args.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with dg.DagsterInstance.get() as instance:
        serve(host, port, os.environ.get("PRODG_METRICS_TOKEN", ""), instance, lambda: graph_of(build_defs()),
              Limits(**listener_settings(os.environ)))
    return 0


def cmd_grafana_alerts(args: argparse.Namespace) -> int:
    """Print Grafana's alerting provisioning file for the alerts of a Prometheus rules file."""
    from .watch.alerting import grafana_rules

    with open(args.rules, encoding="utf-8") as fh:
        sys.stdout.write(grafana_rules(fh.read(), args.rules))
    return 0


def cmd_secrets_migrate(args: argparse.Namespace) -> int:
    """Move the env file's values of every required secret into Infisical (prodg.yaml secrets.infisical), read each
    back and compare it by hash; with --dry-run, only say what would be created, updated or left."""
    from .secret_source import SecretSource, SecretSourceUnavailable, migrate

    path = _config_path(args.path)
    state = load_desired_state(DirTree(path), os.environ)
    sec = state.settings.secrets
    inf = sec.infisical
    if not inf.api_base_url or not inf.project_id:
        print(f"{path}/prodg.yaml: secrets.infisical needs api_base_url and project_id", file=sys.stderr)
        return 1
    env_file = SecretSource(source="env_file", env_file=sec.env_file)
    infisical = SecretSource(source="infisical", infisical_url=inf.api_base_url, infisical_project_id=inf.project_id,
                             infisical_environment=inf.environment, infisical_secret_path=inf.secret_path,
                             infisical_client_id_env=inf.client_id_env,
                             infisical_client_secret_env=inf.client_secret_env,
                             infisical_credentials_file=inf.credentials_file)
    try:
        moves = migrate(env_file, infisical, list(state.settings.required_secrets), args.dry_run)
    except SecretSourceUnavailable as exc:
        print(f"nothing moved: {exc}", file=sys.stderr)
        return 1
    print(f"{sec.env_file} → {infisical.where}")
    for m in moves:
        state_word = "" if args.dry_run or m.action == "missing" else "  read back equal" if m.verified \
            else "  READ BACK DIFFERENT"
        print(f"  {m.name:<28} {m.action}{state_word}")
    missing = [m.name for m in moves if m.action == "missing"]
    if args.dry_run:
        print(f"dry run: nothing written ({sum(m.action in ('create', 'update') for m in moves)} to write)")
        return 0
    bad = [m.name for m in moves if m.action != "missing" and not m.verified]
    if bad or missing:
        print(f"not done: {', '.join(bad + missing)} "
              f"{'did not read back equal' if bad else 'are not in the env file'}; keep the env file", file=sys.stderr)
        return 1
    print(f"all {len(moves)} secrets are in Infisical and read back equal. Next: set `secrets.source: infisical` in "
          f"prodg.yaml and push; once that deploy is green, {sec.env_file} can be removed (and the `secrets_file` "
          "backup target with it).")
    return 0


def cmd_tailnet_policy(args: argparse.Namespace) -> int:
    """Print the Headscale policy prodg writes from the config folder's `tailnet:` section, tests included (what the
    `tailnet` asset applies)."""
    from .desired.loader import load_desired_state
    from .desired.tailnet import policy, policy_text

    path = _config_path(args.path)
    state = load_desired_state(DirTree(path), os.environ)
    value = policy(state.settings, state.services)
    if not value:
        print(f"{path}: prodg.yaml has no tailnet: section; Headscale's policy is not prodg's", file=sys.stderr)
        return 1
    sys.stdout.write(policy_text(value))
    return 0


def _listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prodg", description="GitOps for the ProDG Mainframe")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate a config tree (exit 0 when valid, 1 otherwise)")
    p.add_argument("path", nargs="?", help="config folder (default: $PRODG_CONFIG_DIR or ./config)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("plan", help="desired vs live: what a deploy would change (changes nothing)")
    p.add_argument("path", nargs="?", help="config folder (default: the config repo's working tree)")
    p.add_argument("--commit", help="plan the config at this commit of the config repo")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("deploy", help="deploy a commit now (default: the branch head); an older SHA rolls back")
    p.add_argument("--commit", help="commit (or ref) of the config repo to deploy")
    p.add_argument("--select", help="comma-separated asset keys (default: every deploy asset)")
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("restore", help="restore a target's backup of a day (verified by sha256), or --list them")
    p.add_argument("what", nargs="?", help="the backup target (prodg.yaml backups.targets: postgres, redis, …)")
    p.add_argument("--date", help="the backup's day, YYYY-MM-DD (UTC)")
    p.add_argument("--list", action="store_true", help="list every target's days in the store, with sizes")
    p.add_argument("--files", action="store_true",
                   help="the secrets file, then every service's data folder, each where it belongs (a rebuilt host, "
                        "before its first deploy)")
    p.add_argument("--to", help="a service's data: the folder (default: its data folder); secrets: the file "
                                "(default: secrets.env_file); configs: the folder (required); minio: one bucket "
                                "for every object (default: each object's own)")
    p.add_argument("--only", help="minio: only objects whose BUCKET/KEY starts with this")
    p.add_argument("--target", help="postgres: an existing Postgres container, or the config's service whose "
                                    "container it is (default: a new scratch container)")
    p.add_argument("--force", action="store_true",
                   help="restore over existing data (Postgres: wiped; files and folders: moved aside first)")
    p.add_argument("--identity", help="the age identity file that decrypts it (default: $PRODG_BACKUP_IDENTITY)")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("backup-signer", help="print the key this host signs backup manifests with (for "
                                             "prodg.yaml backups.signers)")
    p.add_argument("--identity", help="the host's age identity file (default: $PRODG_BACKUP_IDENTITY)")
    p.set_defaults(func=cmd_backup_signer)
    p = sub.add_parser("notify-push", help="the branch moved: evaluate the git sensor now (for a post-receive hook)")
    p.add_argument("--dagster-url", help="the webserver (default: $PRODG_DAGSTER_URL)")
    p.add_argument("--location", default="prodg", help="the code location's name (default: prodg)")
    p.set_defaults(func=cmd_notify_push)
    p = sub.add_parser("webhook", help="receive push webhooks and deploy without waiting for the sensor's tick")
    p.add_argument("--listen", default="127.0.0.1:8089", help="HOST:PORT (default: 127.0.0.1:8089)")
    p.add_argument("--dagster-url", help="the webserver (default: $PRODG_DAGSTER_URL)")
    p.add_argument("--location", default="prodg", help="the code location's name (default: prodg)")
    p.set_defaults(func=cmd_webhook)
    p = sub.add_parser("exporter", help="serve prodg's metrics for Prometheus (read from the Dagster instance)")
    p.add_argument("--listen", default="127.0.0.1:9464", help="HOST:PORT (default: 127.0.0.1:9464)")
    p.set_defaults(func=cmd_exporter)
    p = sub.add_parser("secrets", help="the secrets source: `migrate` moves the env file's values into Infisical")
    secrets_sub = p.add_subparsers(dest="secrets_command", required=True)
    p = secrets_sub.add_parser("migrate", help="copy every required secret from the env file into Infisical and read "
                                               "each back (compared by hash); --dry-run: only say what would change")
    p.add_argument("path", nargs="?", help="config folder (default: $PRODG_CONFIG_DIR or ./config)")
    p.add_argument("--dry-run", action="store_true", help="write nothing")
    p.set_defaults(func=cmd_secrets_migrate)
    p = sub.add_parser("tailnet-policy", help="print the Headscale policy (HuJSON, with its tests) prodg writes from "
                                              "prodg.yaml's tailnet: section")
    p.add_argument("path", nargs="?", help="config folder (default: $PRODG_CONFIG_DIR or ./config)")
    p.set_defaults(func=cmd_tailnet_policy)
    p = sub.add_parser("grafana-alerts", help="print Grafana's alerting provisioning for a Prometheus rules file's "
                                              "alerts (config/compose/grafana/provisioning/alerting/prodg.yml)")
    p.add_argument("rules", help="the Prometheus rules file (config/compose/prometheus/rules/prodg.yml)")
    p.set_defaults(func=cmd_grafana_alerts)
    p = sub.add_parser("demo-secrets", help="print a secrets env file with random values for every required key")
    p.add_argument("path", nargs="?")
    p.set_defaults(func=cmd_demo_secrets)
    p = sub.add_parser("images", help="where each service's image comes from (Engine, registry + digest, build)")
    p.add_argument("path", nargs="?")
    p.set_defaults(func=cmd_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an operator gets one line, not a traceback
        print(f"prodg {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
