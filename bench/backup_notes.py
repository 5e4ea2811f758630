"""The notes printed under bench/backup_throughput.py's table: where each measured step's time and CPU went (the
waits, the S3 calls, the CPU split between the parties) and, for a missed target, what limits it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bench.measure import MB, fmt_cpu, fmt_s, mbps
from prodg_assets.backups.format.codec import ZSTD_LEVEL

if TYPE_CHECKING:
    from bench.backup_results import Backups, Restores, Stream
    from bench.fixtures import Built


def backup_note(label: str, bk: Backups, built: Built, full: bool) -> str:
    """Inside the best backup and its same-work baseline: the compression ratios, the wait for pg_dumpall, the S3
    calls, the CPU split."""
    (run, run_cpu, _), (plain_s, plain_cpu), (same, same_cpu) = bk.best, bk.best_plain, bk.best_same
    res = run.result
    raw, wall, s3 = res["raw"], res["wall"], res["s3"]
    s3_text = ", ".join(f"{k} {v[0]}× {v[1]:.1f} s" for k, v in sorted(s3.items(), key=lambda kv: -kv[1][1]))
    return (f"backup {label}: zstd-{ZSTD_LEVEL} {raw / res['stored']:.2f}×"
            + (f", gzip {raw / bk.gz_bytes:.2f}× (mix aimed at 3–5×; docs table alone "
               f"{built.docs_gzip_ratio:.2f}×)" if full else "")
            + f". pg_dumpall itself: {mbps(raw, plain_s)} into /dev/null in its container. Inside the backup's "
            f"{fmt_s(wall)}: the consumer waited {res['producer_s']:.1f} s for pg_dumpall output "
            f"({res['chunks']} chunks, {raw / max(res['chunks'], 1) / 1024:.0f} KiB each); S3 calls to moto "
            f"{sum(v[1] for v in s3.values()):.1f} s ({s3_text}). The same work by the CLIs "
            f"({fmt_s(same.result['wall'])}) waited {same.result['producer_s']:.1f} s for pg_dumpall output and "
            f"{same.result['write_s']:.1f} s writing into zstd's stdin. Backup: {fmt_cpu(run_cpu)}. Same work by the "
            f"CLIs (zstd and age counted in child): {fmt_cpu(same_cpu)}. pg_dumpall > /dev/null: {fmt_cpu(plain_cpu)}."
            + (f" pg_dumpall | gzip: {fmt_cpu(bk.gz[0][1])}." if full else ""))


def rss_note(label: str, bk: Backups, target_mb: int, part_size_mb: int) -> str:
    """The backup's peak RSS over its target, and how much of it is the interpreter with its imports."""
    return (f"backup {label}: peak RSS {bk.rss:.0f} MB exceeds {target_mb} MB "
            f"({bk.best[0].result['rss_ready_mb']:.0f} MB of it is the interpreter with boto3, docker and zstandard "
            f"loaded; the part buffer is {part_size_mb} MiB).")


def stream_note(label: str, bk: Backups, st: Stream) -> str:
    """The routes alone (helper's FIFO, exec API, docker CLI), against pg_dumpall > /dev/null."""
    plain_s = bk.best_plain[0]
    return (f"backup {label}: pg_dumpall's output out of a helper container's FIFO into Python and dropped: "
            f"{fmt_s(st.wall)} ({st.wall / plain_s:.2f}× of pg_dumpall > /dev/null; {fmt_cpu(st.cpu)}); through the "
            f"Engine's exec API: {fmt_s(st.exec_wall)} ({st.exec_wall / plain_s:.2f}×; {fmt_cpu(st.exec_cpu)}); "
            f"through `docker exec … > /dev/null` on the host: {fmt_s(st.cli_s)} ({st.cli_s / plain_s:.2f}×).")


def diagnose_backup(label: str, bk: Backups, st: Stream, target: float) -> str:
    """Why the backup misses its target against the same work by the CLIs through the same route: what the backup
    does beyond that work (the store), how it does the work (in one Python process), a busy machine."""
    (run, cpu, _), (same, _) = bk.best, bk.best_same
    res, s3 = run.result, run.result["s3"]
    cores = os.cpu_count() or 1
    wall, same_s, s3_total = res["wall"], same.result["wall"], sum(v[1] for v in s3.values())
    parts = [f"the route is the same in both (the helper's FIFO alone: {fmt_s(st.wall)}); the backup waited "
             f"{res['producer_s']:.1f} s for pg_dumpall output, the same work {same.result['producer_s']:.1f} s",
             f"compression and encryption: in the backup, zstandard and age's ChaCha20-Poly1305 in one thread of "
             f"the backup process ({run.cpu_s:.1f} CPU s in all, with hashing and the upload); by the CLIs, zstd "
             f"(a compression thread beside its I/O) and age as processes of their own on the {cores} cores "
             f"({same.cpu_s:.1f} CPU s with the process feeding them)"]
    if s3_total > 0.1 * wall:
        parts.append(f"the S3 calls ({s3_total:.1f} s: UploadPart in a thread of its own while the next part is "
                     f"compressed, then, after the last byte, {bk.completion_s:.1f} s of moto_server "
                     f"assembling the parts on CompleteMultipartUpload; moto used {cpu.get('moto', 0):.1f} CPU s)")
    if cpu["busy"] > 0.85 * cpu["wall"] * cores:
        parts.append(f"and the {cores} cores were {100 * cpu['busy'] / (cpu['wall'] * cores):.0f}% busy "
                     f"(processes outside the backup, e.g. concurrent test runs: {cpu.get('other', 0):.1f} CPU s)")
    return (f"backup {label} misses ≤ {target:.2f}× of the same work ({bk.same_ratio:.2f}×: {fmt_s(wall)} vs "
            f"{fmt_s(same_s)}; target {target * same_s:.1f} s): " + "; ".join(parts) + ".")


def restore_notes(label: str, rs: Restores, driver: str) -> list[str]:
    """The censuses after both restores, where restore_postgres's time went, and why it misses ≤ 1.2× if it does."""
    (rr, rr_cpu, findings), (base_s, base_cpu, base_errors, base_findings) = rs.best_pipe, rs.best_base
    rres = rr.result
    own = rres["wall"] - rres["send_s"] - rres["tail_s"]
    census_text = "matches" if not findings else "DIFFERS: " + "; ".join(findings[:3])
    base_census = "matches" if not base_findings else "DIFFERS: " + "; ".join(base_findings[:3])
    notes = [
        f"restore {label}: census after restore_postgres {census_text} (after the baseline: {base_census}; baseline "
        f"psql printed {len(base_errors)} ERROR line(s){', e.g. ' + base_errors[0].strip()[:70] if base_errors else ''}"
        f"; restore_postgres ignored {rres['ignored_errors']}). Of restore_postgres's {fmt_s(rres['wall'])}: "
        f"{rres['send_s']:.1f} s blocked writing to psql's stdin ({rres['sends']} writes, "
        f"{rres['sql_bytes'] / max(rres['sends'], 1) / MB:.1f} MB each on average), {rres['tail_s']:.1f} s from the "
        f"last write until psql finished, {own:.1f} s of its own serial work (download from moto "
        f"{rres['download_s']:.1f} s, zstd decompression, sha256, the emptiness check); peak RSS "
        f"{rr.maxrss_mb:.0f} MB. "
        f"restore_postgres: {fmt_cpu(rr_cpu)}. Baseline: {fmt_cpu(base_cpu)}. verify_first=True (the CLI's default) "
        f"adds a verifying download: {rres['verify_first_s']:.1f} s."]
    ratio = rres["wall"] / base_s
    if ratio > 1.2:
        notes.append(
            f"restore {label} misses ≤ 1.2× ({ratio:.2f}×): restore_postgres's own serial work is {own:.1f} s "
            f"({own / base_s:.2f}× of the baseline); psql/Postgres took {rres['send_s'] + rres['tail_s']:.1f} s of it "
            f"vs the whole {fmt_s(base_s)} of the baseline. The difference in the Postgres part comes from the machine "
            f"(the scratch Postgres writes through {driver}; other processes used "
            f"{rr_cpu.get('other', 0):.0f} vs {base_cpu.get('other', 0):.0f} CPU s during the two runs) and from "
            f"feeding psql in large writes from one thread that also downloads and decompresses.")
    return notes
