"""git in the production code image, which runs as root beside the Docker socket: it reads the one config repository the
image names even when another user owns it, refuses any other repository such a user prepared, and never runs a content
filter (`filter.<name>.smudge`) that a repository's config sets — the review's reproduction, run in the image."""

from __future__ import annotations

import os

from tests.prod.test_production import build_images

# Two repositories owned by uid 4242, each with a smudge filter on every path that leaves a marker in /out when git
# runs it: the named config repo (/opt/prodg/repo) and another one. Then what a run does with each.
SCRIPT = r"""
set -u
make_repo() {
  mkdir -p "$1/config" && cd "$1" && git init -q && git config user.email t@t && git config user.name t
  echo hello >config/a.txt && echo '* filter=evil' >config/.gitattributes && git add -A && git commit -qm x
  git config filter.evil.smudge "touch /out/smudged-$2; cat" && git config filter.evil.required true
  chown -R 4242:4242 "$1" && cd /
}
make_repo /opt/prodg/repo named && make_repo /srv/other other
echo "safe.directory=$(git config --system --get-all safe.directory | tr '\n' ' ')"
git -C /srv/other archive --format=tar HEAD >/dev/null 2>/out/other.err; echo "other archive exit $?"
python3 - <<'EOF'
import io, tarfile
from prodg_assets.gitops.repo import git, git_archive_chunks
sha = git("/opt/prodg/repo", "rev-parse", "HEAD").decode().strip()
tar = tarfile.open(fileobj=io.BytesIO(b"".join(git_archive_chunks("/opt/prodg/repo", sha, "config"))))
print("named archive:", tar.extractfile("config/a.txt").read())
EOF
"""


def test_git_in_the_code_image_reads_only_the_named_repo_and_runs_no_filter(docker_client, tmp_path):
    image = build_images()["DAGSTER_CODE_IMAGE"]
    out = tmp_path / "out"
    out.mkdir()
    container = docker_client.containers.run(image, ["bash", "-c", SCRIPT], detach=True, network_mode="none",
                                             volumes={str(out): {"bind": "/out", "mode": "rw"}})
    try:
        status = container.wait(timeout=120)["StatusCode"]
        log = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status == 0, log
    assert "safe.directory=/opt/prodg/repo \n" in log, log
    # another user's repository elsewhere: git refuses it before reading its config, so its filter never runs
    assert "other archive exit 128" in log, log
    assert "dubious ownership" in (out / "other.err").read_text()
    # the named repository is read, as committed, with its filter switched off
    assert "named archive: b'hello\\n'" in log, log
    assert sorted(os.listdir(out)) == ["other.err"], "a smudge filter ran as root in the code image"
