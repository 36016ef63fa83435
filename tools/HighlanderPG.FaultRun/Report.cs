using System.Globalization;
using System.Text;
using System.Text.Json;

namespace HighlanderPG.FaultRun;

/// <summary>The report: markdown and JSON, with seed, commit, machine and date.</summary>
internal static class Report
{
    public sealed record Written(string Table);

    /// <summary>
    /// What the report says about the run's cluster and machine: taken from the cluster after a run, or from the run's own
    /// report.json when a recorded history is re-checked offline (<c>--check-only</c>).
    /// </summary>
    public sealed record RunFacts(
        string? ClockUnavailable, bool RealClockSteps, bool ServerOurs, string ServerVersion, string PartitionMethod,
        string Commit, string Machine, string LoadAverage, string? Recheck = null);

    public static string CurrentCommit() =>
        Git("rev-parse", "--short=12", "HEAD") + (Git("status", "--porcelain", "--untracked-files=no").Length > 0 ? " (with uncommitted changes)" : "");

    public static Written Write(string directory, Settings settings, Cluster cluster, CheckResult result, DateTimeOffset began, TimeSpan took, string? aborted) =>
        Write(directory, settings, new RunFacts(
            cluster.ClockUnavailable, cluster.RealClockSteps, cluster.Server is not null, cluster.ServerVersion, cluster.PartitionMethod,
            CurrentCommit(), string.Create(CultureInfo.InvariantCulture, $"{Environment.MachineName}, {Environment.ProcessorCount} cores, {FirstLine("/proc/version")}"),
            FirstLine("/proc/loadavg")), result, began, took, aborted);

    public static Written Write(string directory, Settings settings, RunFacts cluster, CheckResult result, DateTimeOffset began, TimeSpan took, string? aborted)
    {
        Directory.CreateDirectory(directory);
        var commit = cluster.Commit;
        var machine = cluster.Machine;
        var ci = CultureInfo.InvariantCulture;
        string F(double? v) => v is { } x ? x.ToString("0.00", ci) : "-";
        string Bound(FaultCheck c) => c.LateBound is not { } b ? "-"
            : c.LateExtension > 0 ? string.Create(ci, $"{b + c.LateExtension:0.00} ({b:0.00}{c.LateWhy})") : b.ToString("0.00", ci);

        var rows = new List<KindRow>();
        foreach (var kind in FaultKinds.All)
        {
            var checks = result.Checks.Where(c => c.Fault.Plan.Kind == kind).ToList();
            var unavailable = checks.SelectMany(c => c.Unavailability).Order().ToList();
            var recovery = checks.Select(c => c.Recovery).OfType<double>().Order().ToList();
            rows.Add(new KindRow(
                FaultKinds.Name(kind),
                kind switch
                {
                    FaultKind.ClockJump when cluster.ClockUnavailable is not null => "not available: " + cluster.ClockUnavailable,
                    FaultKind.ServerRestart or FaultKind.DatabaseDown when !cluster.ServerOurs => "not available: a given server (--connection) is not ours to stop",
                    _ => checks.Count == 0 ? "not drawn" : "",
                },
                FaultKinds.IsFencingCase(kind) ? "fencing" : "lease",
                checks.Count, checks.Count(c => c.Passed), checks.Count(c => !c.Passed),
                checks.Sum(c => c.OverlapsAllowed), checks.Sum(c => c.OverlapsForbidden), checks.Sum(c => c.OverlapsWitnessed),
                checks.Sum(c => c.StaleGuarded), checks.Sum(c => c.UnguardedInterleaved),
                Percentile(unavailable, 0.5), Percentile(unavailable, 0.99), unavailable.Count > 0 ? unavailable[^1] : null,
                Percentile(recovery, 0.5), recovery.Count > 0 ? recovery[^1] : null));
        }

        var table = new StringBuilder();
        table.AppendLine("| fault | claim | faults | passed | failed | overlaps (fencing case) | overlaps (forbidden) | of which kernel-witnessed | stale guarded writes | unguarded interleaved | unavailable p50 / p99 / max (s) | recovered after end p50 / max (s) |");
        table.AppendLine("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|");
        foreach (var r in rows)
        {
            if (r.Faults == 0)
            {
                table.AppendLine(ci, $"| {r.Kind} | {r.Claim} | 0 | | | | | | | | {r.Status} | |");
                continue;
            }

            table.AppendLine(ci, $"| {r.Kind} | {r.Claim} | {r.Faults} | {r.Passed} | {r.Failed} | {r.OverlapsAllowed} | {r.OverlapsForbidden} | {r.OverlapsWitnessed} | {r.StaleGuarded} | {r.UnguardedInterleaved} | {F(r.UnavailableP50)} / {F(r.UnavailableP99)} / {F(r.UnavailableMax)} | {F(r.RecoveryP50)} / {F(r.RecoveryMax)} |");
        }

        var md = new StringBuilder();
        md.AppendLine("# HighlanderPG fault run");
        md.AppendLine();
        md.AppendLine(ci, $"- date: {began:yyyy-MM-dd HH:mm} UTC, took {took.TotalMinutes:0.0} min{(aborted is null ? "" : $" (ABORTED: {aborted})")}");
        md.AppendLine(ci, $"- seed: {settings.Seed} (`--seed {settings.Seed}` replays the same schedule)");
        md.AppendLine(ci, $"- commit: {commit}");
        md.AppendLine(ci, $"- machine: {machine}");
        md.AppendLine(ci, $"- load average (1/5/15 min) at the end: {cluster.LoadAverage} (other work on the machine counts: a node starved of CPU misses its heartbeats)");
        md.AppendLine(ci, $"- server: PostgreSQL {cluster.ServerVersion}{(cluster.ServerOurs ? " (throwaway)" : " (given)")}");
        md.AppendLine(ci, $"- cluster: {settings.Nodes} hosts: {settings.Nodes - settings.CliHosts} library nodes running {settings.Singletons} singletons, {settings.CliHosts} hosts of `highlander run` (one process per singleton) contending for {settings.CliSingletons} of them; fencing on; lease {settings.Lease.TotalSeconds:0.###} s, heartbeat, stop timeout and safety margin a quarter of it each; lock-delay = lease");
        md.AppendLine(ci, $"- partitions: {cluster.PartitionMethod}");
        md.AppendLine(ci, $"- clock jumps: {cluster.ClockUnavailable ?? (cluster.RealClockSteps ? "the machine's wall clock stepped (clock_settime CLOCK_REALTIME, every process and the server) by +-10 to +-60 s and stepped back; a jump counts only if the nodes' own wall clock was seen jumped" : "libfaketime preloaded into the first library host (wall clock faked through an offset file, monotonic clock not faked); a jump counts only if the node's own wall clock was seen jumped")}");
        md.AppendLine(ci, $"- steps of the server's wall clock: {result.Steps.Count} ({result.Steps.Count(st => st.Forward)} forward, {result.Steps.Count(st => !st.Forward)} backward); bounds extended for them (below): the late bound of {result.ExtendedBounds} faults, the settle bound of {result.ExtendedRounds} rounds; {result.ExtensionNeeded} checks passed only within an extended bound");
        if (cluster.Recheck is not null)
        {
            md.AppendLine(ci, $"- {cluster.Recheck}");
        }

        md.AppendLine(ci, $"- history: {result.Lives} child lives; {result.GuardedRows} guarded rows, {result.UnguardedRows} unguarded rows; {result.KernelCleared} apparent overlaps cleared by the kernel lock (the earlier life's end was only an upper bound, but it held the flock and the later start found it free)");
        md.AppendLine();
        md.AppendLine(ci, $"**{result.Passed} passed, {result.Failed} failed** (one check per fault{(result.Unattributed.Count > 0 ? $", plus {result.Unattributed.Count} violations outside any fault" : "")})");
        md.AppendLine();
        md.Append(table);
        md.AppendLine();
        md.AppendLine("A check passes when its fault caused no overlap where the README promises none (\"Safety\": only a pause past the lease and `pg_terminate_backend` need fencing), no stale guarded write committed, every singleton it took away ran again within its bound (lease + 2 s from the fault's start; for the server's own faults, the fault's duration + lease + lock-delay + 3 s), and after its round every singleton ran exactly once within lease + lock-delay + 3 s. A step of the server's wall clock extends these bounds (docs/fault-run.md, \"The checker\"): a fault whose window [start - lease, start + bound] holds a step gets + lease (lock-delay) for each forward step and + X for each backward step of X, and so does the settle bound of a round with a step in [round start - lease, last fault end + lease + lock-delay + 3 s]; the late messages and the \"late bound\" column say so. Overlap and stale-write checks are never relaxed.");
        var failed = result.Checks.Where(c => !c.Passed).ToList();
        if (failed.Count > 0 || result.Unattributed.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Failures");
            foreach (var c in failed)
            {
                md.AppendLine(ci, $"- fault {c.Fault.Plan.Id} (round {c.Round.Index}, {FaultKinds.Name(c.Fault.Plan.Kind)} on {c.Fault.HostName}{(c.Fault.Note.Length > 0 ? ", " + c.Fault.Note : "")}):");
                foreach (var why in c.Failures.Distinct().Take(12))
                {
                    md.AppendLine(ci, $"  - {why}");
                }

                if (c.Failures.Count > 12)
                {
                    md.AppendLine(ci, $"  - ... {c.Failures.Count - 12} more");
                }
            }

            foreach (var u in result.Unattributed)
            {
                md.AppendLine(ci, $"- {u}");
            }
        }

        md.AppendLine();
        md.AppendLine("## Faults");
        md.AppendLine("| # | round | fault | host | start (s) | held (s) | note | singletons taken away | late bound (s) | result |");
        md.AppendLine("|--:|--:|---|---|--:|--:|---|--:|---|---|");
        var t0 = result.Checks.Count > 0 ? result.Checks.Min(c => c.Fault.Start) : 0;
        foreach (var c in result.Checks)
        {
            md.AppendLine(ci, $"| {c.Fault.Plan.Id} | {c.Round.Index} | {FaultKinds.Name(c.Fault.Plan.Kind)} | {c.Fault.HostName} | {Mono.Seconds(c.Fault.Start - t0):0.0} | {Mono.Seconds(c.Fault.End - c.Fault.Start):0.0} | {c.Fault.Note} | {c.Fault.Affected.Count} | {Bound(c)} | {(c.Passed ? "pass" : "FAIL")}{(c.NeededExtension && c.Passed ? " (within the extended bound)" : "")} |");
        }

        File.WriteAllText(Path.Combine(directory, "report.md"), md.ToString());
        var json = new
        {
            date = began, loadAverage = cluster.LoadAverage, recheck = cluster.Recheck, tookSeconds = took.TotalSeconds, aborted, seed = settings.Seed, commit, machine, server = cluster.ServerVersion,
            settings = new { settings.Nodes, settings.Singletons, settings.CliHosts, settings.CliSingletons, leaseSeconds = settings.Lease.TotalSeconds, settings.Smoke },
            partitions = cluster.PartitionMethod, clockJumps = cluster.ClockUnavailable ?? (cluster.RealClockSteps ? "real (clock_settime)" : "libfaketime"),
            passed = result.Passed, failed = result.Failed,
            clockSteps = result.Steps.Select(st => new { faultId = st.FaultId, seconds = Mono.Seconds(st.At - t0), forward = st.Forward, size = st.Seconds }),
            extendedLateBounds = result.ExtendedBounds, extendedSettleRounds = result.ExtendedRounds, passedOnlyWithExtension = result.ExtensionNeeded, lives = result.Lives, kernelCleared = result.KernelCleared, result.GuardedRows, result.UnguardedRows,
            kinds = rows,
            faults = result.Checks.Select(c => new
            {
                id = c.Fault.Plan.Id, round = c.Round.Index, kind = c.Fault.Plan.Kind.ToString(), host = c.Fault.HostName,
                startSeconds = Mono.Seconds(c.Fault.Start - t0), heldSeconds = Mono.Seconds(c.Fault.End - c.Fault.Start), note = c.Fault.Note,
                affected = c.Fault.Affected.Count, lateBoundSeconds = c.LateBound, lateExtensionSeconds = c.LateExtension, lateExtendedFor = c.LateWhy.TrimStart(' ', '+'),
                settleExtensionSeconds = c.SettleExtension, settledInHistory = c.SettledAt is not null, neededExtension = c.NeededExtension, unavailability = c.Unavailability, recovery = c.Recovery, passed = c.Passed, failures = c.Failures,
            }),
            overlaps = result.Overlaps.Select(o => new { o.Singleton, o.Round, o.Allowed, o.Witnessed, milliseconds = Mono.Seconds(o.To - o.From) * 1000, description = Checker.Describe(o) }),
            staleGuarded = result.Stale.Select(Checker.Describe),
            unguardedInterleaved = result.Interleaved.Count,
            unattributed = result.Unattributed,
        };
        File.WriteAllText(Path.Combine(directory, "report.json"), JsonSerializer.Serialize(json, new JsonSerializerOptions { WriteIndented = true }));
        return new Written(table.ToString());
    }

    private static double? Percentile(List<double> sorted, double p) =>
        sorted.Count == 0 ? null : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Count) - 1, 0, sorted.Count - 1)];

    private static string FirstLine(string path)
    {
        try
        {
            return File.ReadLines(path).FirstOrDefault()?.Split(" (")[0] ?? "";
        }
        catch (IOException)
        {
            return "";
        }
    }

    private static string Git(params string[] args)
    {
        try
        {
            var start = new System.Diagnostics.ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in args)
            {
                start.ArgumentList.Add(a);
            }

            using var p = System.Diagnostics.Process.Start(start)!;
            var output = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? output : "unknown";
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "unknown";
        }
    }

    public sealed record KindRow(
        string Kind, string Status, string Claim, int Faults, int Passed, int Failed, int OverlapsAllowed, int OverlapsForbidden, int OverlapsWitnessed,
        int StaleGuarded, int UnguardedInterleaved, double? UnavailableP50, double? UnavailableP99, double? UnavailableMax, double? RecoveryP50, double? RecoveryMax);
}
