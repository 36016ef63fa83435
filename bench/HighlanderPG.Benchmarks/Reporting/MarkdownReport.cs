using System.Globalization;
using System.Text;
using HighlanderPG.Benchmarks.Cases;
using HighlanderPG.Benchmarks.Measurement;

namespace HighlanderPG.Benchmarks.Reporting;

/// <summary>The Markdown report: environment, results table, verdicts against lease-protocol.md's targets, details, method.</summary>
internal sealed class MarkdownReport(
    BenchmarkSettings settings, EnvironmentInfo environment, DateTimeOffset started, DateTimeOffset finished, IReadOnlyList<CaseResult> results)
{
    /// <summary>A component whose name starts with this is an interval between two milestones, not a time after the fault.</summary>
    public const string IntervalPrefix = "interval: ";

    private const double GracefulFactor = 1.5;
    private const double CrashFactor = 2.0;
    private const double CrashP99LimitMs = 250;

    public string DefaultPath(string? outPath)
    {
        if (outPath is not null)
        {
            return Path.GetFullPath(outPath);
        }

        var root = environment.RepositoryRoot ?? Environment.CurrentDirectory;
        return Path.Combine(root, "bench", "results", $"handover-{started.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}.md");
    }

    /// <summary>The results and verdict tables (also printed on the console).</summary>
    public string RenderSummary()
    {
        var text = new StringBuilder();
        text.AppendLine("| case | waiter | fault | n | p50 | p90 | p99 | max | p50 vs floor |");
        text.AppendLine("|---|---|---|--:|--:|--:|--:|--:|--:|");
        foreach (var result in results)
        {
            var summary = result.Summary;
            text.Append(CultureInfo.InvariantCulture,
                $"| `{result.Id}` | {result.System} | {result.Fault} | {summary.Count}{(result.Error is null ? "" : " (stopped early)")} | " +
                $"{Format.Sample(summary.P50)} | {Format.Sample(summary.P90)} | {Format.Sample(summary.P99)} | {Format.Sample(summary.Max)} | {RatioToFloor(result)} |");
            text.AppendLine();
        }

        text.AppendLine();
        text.AppendLine("| target (lease-protocol.md, default settings) | measured | verdict |");
        text.AppendLine("|---|---|---|");
        foreach (var (target, measured, verdict) in Verdicts())
        {
            text.Append(CultureInfo.InvariantCulture, $"| {target} | {measured} | {verdict} |").AppendLine();
        }

        return text.ToString();
    }

    /// <summary>Every sample, as JSON.</summary>
    public string RenderJson() => System.Text.Json.JsonSerializer.Serialize(
        new
        {
            date = started,
            finished,
            command = settings.CommandLine,
            machine = environment.Machine,
            server = environment.ServerVersion,
            libraries = environment.Libraries,
            iterations = settings.Iterations,
            seed = settings.Seed,
            cases = results.Select(r => new
            {
                id = r.Id,
                system = r.System,
                fault = r.Fault,
                description = r.Description,
                error = r.Error,
                p50Ms = r.Summary.P50?.Milliseconds,
                p90Ms = r.Summary.P90?.Milliseconds,
                maxMs = r.Summary.Max?.Milliseconds,
                samplesMs = r.Samples.Select(s => s.Milliseconds),
                censored = r.Samples.Select(s => s.Censored),
                components = r.Components,
                notes = r.Notes,
            }),
        },
        new System.Text.Json.JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.CamelCase });

    /// <summary>A dot plot of every case's samples.</summary>
    public string RenderChart() => SvgChart.Render(
        $"Hand-over: from the fault to the work running again ({started:yyyy-MM-dd}, commit {environment.Commit})",
        [.. results.Where(r => r.Samples.Count > 0).Select(r => new SvgChart.Series(
            $"{r.Id} ({r.System}, {r.Fault})", [.. r.Samples.Where(s => !s.Censored).Select(s => s.Milliseconds)], r.Samples.Count(s => s.Censored)))]);

    public string Render(string? chartFile = null)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"# Hand-over latency: HighlanderPG vs. the floor and DistributedLock.Postgres ({started:yyyy-MM-dd})");
        text.AppendLine();
        text.AppendLine("How soon a waiting node runs the work (or holds the lock) again after its holder steps down (graceful), is SIGKILLed");
        text.AppendLine("(crash) or is cut off from the database, measured on the waiter's `Stopwatch` from just before the fault.");
        text.AppendLine("Produced by `bench/HighlanderPG.Benchmarks` (see `bench/README.md`); targets from `lease-protocol.md`.");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Date:** {started:yyyy-MM-dd HH:mm} UTC (the run took {(finished - started).TotalMinutes:0.0} min)");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Command:** `{settings.CommandLine}`");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Machine:** {environment.Machine}; {environment.Runtime}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **PostgreSQL:** {environment.ServerVersion}; {environment.ServerDescription}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Server settings:** {string.Join(", ", environment.ServerSettings.Select(s => $"`{s.Name}` = {s.Value}"))}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Libraries:** {environment.Libraries}");
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- **Machine load:** 1-minute load average {Load(environment.LoadAverageAtStart)} at the start, {Load(environment.LoadAverageAtEnd)} at the end, on {Environment.ProcessorCount} cores (anything else running on the machine competes with the server, the waiter and the holders; see each case)");
        var slow = results.Any(r => r.Id == "dl-crash") ? $" ({settings.SlowIterations} for `dl-crash`, no warm-up)" : "";
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Iterations:** {settings.Iterations} per case after {settings.Warmup} warm-up{slow}; cap {settings.Cap.TotalSeconds:0} s; dwell seed {settings.Seed}");
        text.AppendLine();
        text.AppendLine("## Results");
        text.AppendLine();
        var n = settings.Iterations;
        text.AppendLine(CultureInfo.InvariantCulture,
            $"Percentiles are nearest-rank: with {n} samples p50 is the {Rank(0.5, n)}th smallest, p90 the {Rank(0.9, n)}th and p99 the {Rank(0.99, n)}th{(Rank(0.99, n) == n ? " (the maximum)" : "")}.");
        text.AppendLine("`> cap` means the hand-over had not happened when the waiter gave up. \"p50 vs floor\" divides by the floor's p50 for the same fault (for `highlander run`, by the p50 of starting its command directly, `cli-floor`).");
        text.AppendLine();
        text.Append(RenderSummary());
        text.AppendLine();
        if (chartFile is not null)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"![Hand-over distributions]({chartFile})");
            text.AppendLine();
        }

        text.AppendLine("## Cases");
        foreach (var result in results)
        {
            RenderCase(text, result);
        }

        text.AppendLine();
        text.AppendLine("## Method");
        text.AppendLine();
        text.AppendLine(Method);
        return text.ToString();
    }

    private void RenderCase(StringBuilder text, CaseResult result)
    {
        var summary = result.Summary;
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"### `{result.Id}`: {result.System}, {result.Fault}");
        text.AppendLine();
        text.AppendLine(result.Description);
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"- Settings: {result.Settings ?? (result.System == HighlanderCases.System ? HighlanderDefaults : "defaults.")}");
        var censored = summary.CensoredCount > 0 ? $"; {summary.CensoredCount} beyond the cap" : "";
        var group = result.GroupSize > 1 ? $"its group of {result.GroupSize} interleaved cases" : "the case";
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- {summary.Count} measured iterations after {result.Warmup} warm-up; min {Format.Sample(summary.Min)}, p50 {Format.Sample(summary.P50)}, p90 {Format.Sample(summary.P90)}, max {Format.Sample(summary.Max)}{censored}; {group} took {result.GroupElapsed.TotalSeconds:0} s with set-up.");
        if (result.LoadAverages.Count > 0)
        {
            var loads = Summary.Of(result.LoadAverages);
            text.AppendLine(CultureInfo.InvariantCulture,
                $"- Machine load (1-minute load average before each iteration): min {loads.Min!.Value.Milliseconds:0.0}, median {loads.P50!.Value.Milliseconds:0.0}, max {loads.Max!.Value.Milliseconds:0.0} on {Environment.ProcessorCount} cores.");
        }
        var milestones = result.Components.Where(c => !c.Key.StartsWith(IntervalPrefix, StringComparison.Ordinal)).OrderBy(c => Summary.Of(c.Value).P50!.Value.Milliseconds).ToList();
        var intervals = result.Components.Where(c => c.Key.StartsWith(IntervalPrefix, StringComparison.Ordinal)).ToList();
        if (milestones.Count > 0)
        {
            text.AppendLine("- Milestones, after the fault (the hand-over ends at the last):");
            foreach (var (name, values) in milestones)
            {
                var parts = Summary.Of(values);
                text.AppendLine(CultureInfo.InvariantCulture, $"  - {name}: p50 {Format.Sample(parts.P50)}, p90 {Format.Sample(parts.P90)}, max {Format.Sample(parts.Max)}");
            }

            text.AppendLine(CultureInfo.InvariantCulture, $"  - {(result.System == HighlanderCases.System ? "follower's child started" : result.System == CliCases.System ? "follower's command printed its first line" : "waiter got the lock")} (the measurement): p50 {Format.Sample(summary.P50)}, p90 {Format.Sample(summary.P90)}, max {Format.Sample(summary.Max)}");
        }

        foreach (var (name, values) in intervals)
        {
            var parts = Summary.Of(values);
            text.AppendLine(CultureInfo.InvariantCulture, $"- {name[IntervalPrefix.Length..]}: p50 {Format.Sample(parts.P50)}, p90 {Format.Sample(parts.P90)}, min {Format.Sample(parts.Min)}, max {Format.Sample(parts.Max)}");
        }

        if (result.Samples.Count > 0)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"- All samples, in order: {string.Join(", ", result.Samples.Select(s => Format.Sample(s)))}");
        }

        foreach (var note in result.Notes)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"- {note}");
        }

        if (result.Error is not null)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"- **Stopped early:** {result.Error}");
        }
    }

    private static readonly string HighlanderDefaults = DescribeHighlanderDefaults();

    private static string DescribeHighlanderDefaults()
    {
        var o = new HighlanderOptions();
        return string.Create(CultureInfo.InvariantCulture,
            $"HighlanderPG defaults (LeaseDuration {o.LeaseDuration.TotalSeconds:0} s, HeartbeatInterval {o.HeartbeatInterval.TotalSeconds:0.#} s, StopTimeout {o.StopTimeout.TotalSeconds:0.#} s, SafetyMargin {o.SafetyMargin.TotalSeconds:0.#} s, WaitSlice {(o.WaitSlice ?? TimeSpan.FromSeconds(5)).TotalSeconds:0.#} s, ...).");
    }

    private static int Rank(double q, int n) => Math.Clamp((int)Math.Ceiling(q * n), 1, n);

    private static string Load(double? load) => load is { } l ? l.ToString("0.0", CultureInfo.InvariantCulture) : "unknown";

    private string RatioToFloor(CaseResult result)
    {
        var floor = result.System == CliCases.System || result.Id == "cli-floor" ? Find("cli-floor") : Floor(result.Fault);
        if (floor is null || floor == result || floor.Summary.P50 is not { Censored: false } f || result.Summary.P50 is not { } p)
        {
            return floor == result ? "1.0x" : "–";
        }

        return p.Censored ? "> " + Format.Ratio(p.Milliseconds / f.Milliseconds) : Format.Ratio(p.Milliseconds / f.Milliseconds);
    }

    private CaseResult? Floor(string fault) => results.FirstOrDefault(r => r.Id == (fault == "graceful" ? "floor-graceful" : fault == "crash" ? "floor-crash" : null));

    private CaseResult? Find(string id) => results.FirstOrDefault(r => r.Id == id);

    private IEnumerable<(string Target, string Measured, string Verdict)> Verdicts()
    {
        const string NotMeasured = "not measured";
        var floorGraceful = Find("floor-graceful")?.Summary.P50;
        var floorCrash = Find("floor-crash")?.Summary.P50;

        var graceful = Find("hl-graceful");
        yield return graceful?.Summary.P50 is { } gp && floorGraceful is { Censored: false } fg
            ? AtMost($"graceful hand-over p50 ≤ {GracefulFactor}x floor", gp, GracefulFactor * fg.Milliseconds, $"floor p50 {Format.Sample(fg)}, limit {Format.Milliseconds(GracefulFactor * fg.Milliseconds)}; {Format.Ratio(gp.Milliseconds / fg.Milliseconds)} floor")
            : ($"graceful hand-over p50 ≤ {GracefulFactor}x floor", NotMeasured, "–");

        var crash = Find("hl-crash");
        yield return crash?.Summary.P50 is { } cp && floorCrash is { Censored: false } fc
            ? AtMost($"holder crash p50 ≤ {CrashFactor}x floor", cp, CrashFactor * fc.Milliseconds, $"floor p50 {Format.Sample(fc)}, limit {Format.Milliseconds(CrashFactor * fc.Milliseconds)}; {Format.Ratio(cp.Milliseconds / fc.Milliseconds)} floor")
            : ($"holder crash p50 ≤ {CrashFactor}x floor", NotMeasured, "–");
        yield return crash?.Summary.P99 is { } c99
            ? AtMost($"holder crash p99 < {CrashP99LimitMs:0} ms", c99, CrashP99LimitMs, $"limit {CrashP99LimitMs:0} ms")
            : ($"holder crash p99 < {CrashP99LimitMs:0} ms", NotMeasured, "–");

        // highlander run against the library: within 2x the library's hand-over plus the cost of starting the command
        // (the cli-floor), for the same fault, in the same run.
        var cliFloor = Find("cli-floor")?.Summary.P50;
        foreach (var (cliId, libraryId) in new[] { ("cli-graceful", "hl-graceful"), ("cli-crash", "hl-crash") })
        {
            var target = $"`{cliId}` p50 ≤ 2x `{libraryId}` p50 + `cli-floor` p50";
            yield return Find(cliId)?.Summary.P50 is { } cli && Find(libraryId)?.Summary.P50 is { Censored: false } library && cliFloor is { Censored: false } start
                ? AtMost(target, cli, (2 * library.Milliseconds) + start.Milliseconds,
                    $"library p50 {Format.Sample(library)}, command start p50 {Format.Sample(start)}, limit {Format.Milliseconds((2 * library.Milliseconds) + start.Milliseconds)}")
                : (target, NotMeasured, "–");
        }

        var cutOff = Find("hl-cutoff");
        var bound = HighlanderCases.CutOffLease + TimeSpan.FromSeconds(1);
        var boundText = $"cut-off holder replaced within lease + 1 s ({bound.TotalSeconds:0} s with a {HighlanderCases.CutOffLease.TotalSeconds:0} s lease), every time";
        if (cutOff?.Summary.Max is { } cmax)
        {
            var within = cutOff.Samples.Count(s => !s.Censored && s.Milliseconds <= bound.TotalMilliseconds);
            yield return AtMost(boundText, cmax, bound.TotalMilliseconds, $"{within} of {cutOff.Samples.Count} within; limit {Format.Milliseconds(bound.TotalMilliseconds)}");
            var violations = cutOff.OrderViolations ?? 0;
            yield return ("cut-off: old child stopped before the new one started, every time",
                violations == 0 ? $"every iteration ({cutOff.Samples.Count + cutOff.Warmup}, warm-up included)" : $"{violations} violation(s)",
                violations == 0 ? "**PASS**" : "**FAIL**");
        }
        else
        {
            yield return (boundText, NotMeasured, "–");
        }
    }

    private static (string, string, string) AtMost(string target, Sample measured, double limitMs, string detail)
    {
        var pass = !measured.Censored && measured.Milliseconds <= limitMs;
        var verdict = pass ? "**PASS**" : $"**MISS** by {(measured.Censored ? "more than " : "")}{Format.Milliseconds(measured.Milliseconds - limitMs)} ({Format.Ratio(measured.Milliseconds / limitMs)} the limit)";
        return (target, $"{Format.Sample(measured)} ({detail})", verdict);
    }

    private const string Method = """
        - **Timing.** Every number is `Stopwatch` time in the benchmark process, which is always the waiter: from just before the
          fault is injected (the holder's unlock / `DisposeAsync` / `StepDownAsync` call, `Process.Kill()`, or the proxy switched to
          blackhole) to the moment the waiter's lock call returned (floor, DistributedLock) or the follower's child delegate was
          entered (HighlanderPG: the work is running again, not merely the lock taken; when the follower took the lock is listed as a milestone).
        - **Ready before the fault.** A fault is injected only once the waiter's lock request is seen waiting (not granted) in
          `pg_locks` by a separate observer session: the floor's and DistributedLock's `ExclusiveLock`, HighlanderPG's wait session's
          `ShareLock`. Holder processes say `READY` on standard output once they hold the lock (HighlanderPG: once their child runs).
        - **Crash** is `SIGKILL` of a separate holder process: this executable relaunched with the hidden `node` verb
          (`--kind raw|distributedlock|highlander`). The kernel closes its sockets; the server ends the backend when it next reads
          from it, freeing its locks.
        - **Cut-off** puts HighlanderPG's `FaultProxy` between the leader node and the server and switches it to blackhole: nothing is
          forwarded, nothing is closed, so the server only learns of it from `idle_session_timeout` (the lease). This is an
          application-level cut-off (the proxy's kernel still answers TCP keepalives), which is what the lease must handle.
        - **HighlanderPG iterations** use fresh nodes (hosts) and a fresh singleton name each time; after the follower's wait session
          blocks, a random dwell in [0, heartbeat interval) comes before the fault, so faults land at random phases of the
          follower's heartbeat. The in-process nodes count escalations instead of ending the process (the only option changed in the
          default-settings cases; their child stops at once, so no escalation is expected).
        - **Where HighlanderPG's time goes** (milestones of `hl-*` cases), observed without touching the library: the old and new
          children stamp the shared `Stopwatch` when they start and stop; a `MeterListener` on HighlanderPG's documented
          `highlander.session.round_trip.duration` histogram (per in-process node) tells when each node's lock-session round
          trips were sent and answered (the leader's unlock + NOTIFY, the follower's try + holder query), and how many the
          follower needed; in `hl-graceful` a bystander session that only LISTENs on the release channel tells when the NOTIFY
          was delivered.
        - **`highlander run`** (`cli-*`): two `highlander run` processes (the repository's Release build, default options) with the
          command `sh -c 'echo started $$; exec sleep 1000'`, which inherits `highlander`'s standard output; the benchmark reads it and
          stamps each line when it arrives. The fault comes once the follower's wait session (`highlander-wait/<node>`) is seen
          blocked on a lock in `pg_stat_activity`, after a random dwell. `cli-floor` spawns the same command directly and reads its
          first line the same way: the least a `highlander run` hand-over can add to the lock's own hand-over.
        - **DistributedLock** is used with its defaults (multiplexing on, keepalive off), holder and waiter each with their own
          connection pool (distinct `Application Name`); "watched" means the holder registered a callback on `HandleLostToken`.
        - **Everything shares 2 cores**: server, waiter and (in-process cases) the holder. Loopback TCP; no network latency. The
          absolute numbers are this machine's; the ratios to the floor are the point.
        """;
}
