using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using Npgsql;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// The spread suite (<c>--suite spread</c>, issue 11 "Spread"): <c>--scale-nodes</c> (10) <c>node --kind scale</c>
/// processes x <c>--scale-singletons</c> (1,000), started together under one placement; the per-node leader counts after
/// the start, after SIGKILL of the node leading the most, and after that node comes back (same node id), with the number
/// of hand-overs each change caused (children that returned on a node that was not being stopped: under Spread, graceful
/// hand-overs). Counts come from the nodes' own START/STOP lines; a phase ends when no child started or stopped anywhere
/// for <see cref="Quiet"/> (longer than the settle time, after which hand-overs to a returning node begin).
/// </summary>
internal sealed class SpreadCases(BenchContext context, SpreadResults results)
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan RunningTimeout = TimeSpan.FromSeconds(300);
    private static readonly TimeSpan QuietCap = TimeSpan.FromSeconds(240);
    private static readonly HighlanderOptions Defaults = new();

    /// <summary>A phase is over after this long without a start or stop: the settle time (5 heartbeats) plus 2 heartbeats.</summary>
    public static readonly TimeSpan Quiet = (Defaults.HeartbeatInterval * 5) + (Defaults.HeartbeatInterval * 2);

    private BenchmarkSettings Settings => context.Settings;

    public async Task RunAsync(string placement, int run, CancellationToken ct)
    {
        var (nodes, singletons) = (Settings.ScaleNodes, Settings.ScaleSingletons);
        var label = $"{placement} #{run}";
        context.Progress($"{label}: {nodes} nodes x {singletons} singletons, started together");
        var tag = placement == "spread" ? "sp" : "fc";
        await using var cluster = new ScaleCluster(context, $"bench-{context.RunId}-{tag}{run}", singletons, $"{tag}{run}-", placement);
        var phases = new List<SpreadPhase>();

        // Start: all together.
        var t0 = Stopwatch.GetTimestamp();
        var started = Enumerable.Range(0, nodes).Select(_ => cluster.StartNode()).ToList();
        foreach (var node in started)
        {
            await node.WaitReadyAsync(ReadyTimeout, ct);
        }

        var allRunning = await cluster.WaitAllRunningAsync(RunningTimeout, ct);
        phases.Add(Phase("start: all running", Sample.ToMilliseconds(allRunning - t0), cluster.Live, StopsOf(cluster.Live)));
        var quiet = await WaitQuietAsync(cluster, t0, ct);
        phases.Add(Phase("start: settled", quiet, cluster.Live, StopsOf(cluster.Live)));
        context.Progress($"{label}: {Describe(phases[^2])}; {Describe(phases[^1])}");
        var lockRows = await LockTableCostAsync(ct);

        // Kill the node leading the most.
        var live = cluster.Live;
        var victim = live.MaxBy(n => n.RunningCount)!;
        var names = victim.Running().Keys.ToList();
        var stopsBefore = StopsOf(live.Where(n => n != victim));
        victim.Faulted = true;
        var fault = Stopwatch.GetTimestamp();
        victim.Process.Kill();
        var takeOvers = await cluster.WaitTakenOverAsync(victim, names, fault, Settings.Cap, ct);
        await victim.Process.WaitExitAsync(TimeSpan.FromSeconds(60));
        var times = takeOvers.Values.OfType<double>().Order().ToList();
        var afterKill = await WaitQuietAsync(cluster, fault, ct);
        var killPhase = Phase($"after SIGKILL of {victim.NodeId} (led {names.Count})", afterKill, cluster.Live, StopsOf(cluster.Live) - stopsBefore) with
        {
            TakeOverP50Ms = times.Count == 0 ? null : Summary.Of(times).P50!.Value.Milliseconds,
            TakeOverMaxMs = times.Count == 0 ? null : times[^1],
            Missing = takeOvers.Count - times.Count,
        };
        phases.Add(killPhase);
        context.Progress($"{label}: {Describe(killPhase)}");

        // It comes back, under the same node id.
        live = cluster.Live;
        stopsBefore = StopsOf(live);
        var back = Stopwatch.GetTimestamp();
        var returned = cluster.StartNode(victim.NodeId);
        await returned.WaitReadyAsync(ReadyTimeout, ct);
        var afterReturn = await WaitQuietAsync(cluster, back, ct);
        var returnPhase = Phase($"after {victim.NodeId} came back", afterReturn, cluster.Live, StopsOf(live) + returned.Stops - stopsBefore) with
        {
            ReturnedLeads = returned.RunningCount,
        };
        phases.Add(returnPhase);
        context.Progress($"{label}: {Describe(returnPhase)}");
        results.Runs.Add(new SpreadRun(placement, run, nodes, singletons, victim.NodeId, names.Count, phases, lockRows.Rows, lockRows.ScanMs));
    }

    private static int StopsOf(IEnumerable<ScaleNode> nodes) => nodes.Sum(n => n.Stops);

    private static SpreadPhase Phase(string what, double? ms, IReadOnlyList<ScaleNode> nodes, int handOvers)
    {
        var counts = nodes.Select(n => new NodeCount(n.NodeId, n.RunningCount)).ToList();
        var mean = counts.Average(c => (double)c.Running);
        var stddev = Math.Sqrt(counts.Average(c => (c.Running - mean) * (c.Running - mean)));
        return new SpreadPhase(what, ms, counts.Min(c => c.Running), counts.Max(c => c.Running), stddev, counts.Sum(c => c.Running), handOvers, counts);
    }

    private static string Describe(SpreadPhase p)
    {
        var text = string.Create(CultureInfo.InvariantCulture,
            $"{p.Phase} after {(p.Ms is { } ms ? Format.Milliseconds(ms) : "–")}: {p.Total} running, min {p.Min} max {p.Max} stddev {p.StdDev:0.0}, {p.HandOvers} hand-over(s)");
        if (p.TakeOverP50Ms is { } p50)
        {
            text += string.Create(CultureInfo.InvariantCulture, $", take-over p50 {Format.Milliseconds(p50)} max {Format.Milliseconds(p.TakeOverMaxMs!.Value)}{(p.Missing > 0 ? $", {p.Missing} NOT within the cap" : "")}");
        }

        return p.ReturnedLeads is { } r ? text + string.Create(CultureInfo.InvariantCulture, $", the returned node leads {r}") : text;
    }

    /// <summary>
    /// Waits until no child started or stopped on a live node for <see cref="Quiet"/>; returns the time from
    /// <paramref name="from"/> to the last start or stop (null if it never went quiet within the cap).
    /// </summary>
    private async Task<double?> WaitQuietAsync(ScaleCluster cluster, long from, CancellationToken ct)
    {
        var quiet = (long)(Quiet.TotalSeconds * Stopwatch.Frequency);
        var until = Stopwatch.GetTimestamp() + (long)(QuietCap.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            var last = Math.Max(from, cluster.Live.Max(n => n.LastEvent));
            var now = Stopwatch.GetTimestamp();
            if (now - last >= quiet)
            {
                return Sample.ToMilliseconds(last - from);
            }

            if (now > until)
            {
                results.Notes.Add($"{cluster.Namespace}: still moving {QuietCap.TotalSeconds:0} s after the change; counted then.");
                return null;
            }

            await Task.Delay(100, ct);
        }
    }

    /// <summary>
    /// What a scan of the lock table costs with the cluster's locks held: the spread placement's membership read scans
    /// pg_locks once per heartbeat per node (and when a holder goes). Measured from the benchmark as the round trip of a
    /// plain <c>count(*)</c> over pg_locks (a proxy, the same scan), p50 of 20.
    /// </summary>
    private async Task<(long Rows, double ScanMs)> LockTableCostAsync(CancellationToken ct)
    {
        await using var connection = await context.OpenDedicatedAsync("bench-spread", ct);
        await using var cmd = new NpgsqlCommand("SELECT count(*) FROM pg_catalog.pg_locks", connection);
        var rows = 0L;
        var samples = new List<double>();
        for (var i = 0; i < 20; i++)
        {
            var t = Stopwatch.GetTimestamp();
            rows = (long)(await cmd.ExecuteScalarAsync(ct))!;
            samples.Add(Sample.ToMilliseconds(Stopwatch.GetTimestamp() - t));
        }

        return (rows, Summary.Of(samples).P50!.Value.Milliseconds);
    }
}
