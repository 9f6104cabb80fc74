#!/usr/bin/env bash
# The Go micro-benchmarks beside the drivers: runtime's in-process vs HTTP ratio on one
# model, updater's streaming download and the decomposition of the install path
# (copy, + sha256, + fsync, Downloader settings), and repo-server's whole check-ins over
# HTTP with verified quotes (the device API; fleet store on sqlite and on PostgreSQL), quote verification alone and
# with a boot event log and a 1,000-entry IMA list (attest/verify), the audit log's appends (records/s),
# -count 6, summarised by benchstat (median and
# confidence interval per metric). Writes bench/gobench.txt (raw) and bench/benchstat.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
GO="${GO:-go}"
BENCHSTAT="golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da"
{
  $GO test -run '^$' -bench 'BenchmarkInfer(SessionRun|Runtime|HTTP|Ratio)$' -benchmem -count 6 ./runtime
  $GO test -run '^$' -bench 'BenchmarkLoadEncrypted' -benchtime 5x -benchmem -count 6 ./runtime
  $GO test -run '^$' -bench 'BenchmarkDownload$' -benchtime 3x -benchmem -count 6 ./updater
  $GO test -run '^$' -bench 'BenchmarkInstallPath$' -benchtime 2x -count 6 ./updater
  $GO test -run '^$' -bench 'BenchmarkCheckIn(Postgres)?$' -count 6 ./repo-server
  $GO test -run '^$' -bench 'BenchmarkVerify(BootIMA)?$' -count 6 ./attest/verify
  $GO test -run '^$' -bench 'BenchmarkAppendTx' -benchtime 2000x -count 6 ./repo-server/audit
} | tee bench/gobench.txt
# The audit log at 1,000,000 records: proof sizes, proof check and whole-export verify times.
$GO test -run 'TestLargeLog$' -v ./repo-server/audit | grep -E 'bench_test|^ok' | tee bench/auditlog.txt
$GO run "$BENCHSTAT" bench/gobench.txt | tee bench/benchstat.txt
